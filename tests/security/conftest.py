from tests.e2e.conftest import make_app, otlp_receiver

__all__ = ["make_app", "otlp_receiver"]
