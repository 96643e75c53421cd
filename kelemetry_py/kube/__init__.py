"""Kubernetes knowledge shared by linkers and watchers: the resource catalog built from API discovery."""

from kelemetry_py.kube.catalog import (
    CatalogSource,
    ClusterCatalogs,
    DiscoveryError,
    ResourceCatalog,
    ResourceInfo,
    guess_plural,
    split_api_version,
)

__all__ = [
    "CatalogSource",
    "ClusterCatalogs",
    "DiscoveryError",
    "ResourceCatalog",
    "ResourceInfo",
    "guess_plural",
    "split_api_version",
]
