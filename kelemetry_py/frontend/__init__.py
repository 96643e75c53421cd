"""The query frontend: assembles raw per-object traces into display-mode views; serves Jaeger's query APIs."""
