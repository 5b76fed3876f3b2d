"""The integration models: each a composition of ``nn`` blocks and ``losses`` run by the one Trainer."""

from .base import EMBEDDING_KEY, IntegrationModel, read_embedding
from .scmodal import SCMODAL, SCMODALConfig
from .scmodal_module import SCMODALModule, SCMODALWeights

METHODS: dict[str, type[IntegrationModel]] = {"scmodal": SCMODAL}

__all__ = ["EMBEDDING_KEY", "METHODS", "SCMODAL", "SCMODALConfig", "SCMODALModule", "SCMODALWeights", "IntegrationModel",
           "read_embedding"]
