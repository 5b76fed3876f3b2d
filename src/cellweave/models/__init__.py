"""The integration models: each a composition of ``nn`` blocks and ``losses`` run by the one Trainer."""

from .base import EMBEDDING_KEY, IntegrationModel, read_embedding
from .cvqvae import CVQVAE, CVQVAEConfig
from .factvae import FactVAE, FactVAEConfig
from .scmodal import SCMODAL, SCMODALConfig
from .scmodal_module import SCMODALModule, SCMODALWeights
from .scmrdr import SCMRDR, SCMRDRConfig

METHODS: dict[str, type[IntegrationModel]] = {"scmodal": SCMODAL, "scmrdr": SCMRDR, "cvqvae": CVQVAE, "factvae": FactVAE}
#: The [model] table of each method (``Config.from_dict`` checks its keys, types and ranges).
MODEL_CONFIGS: dict[str, type] = {"scmodal": SCMODALConfig, "scmrdr": SCMRDRConfig, "cvqvae": CVQVAEConfig,
                                  "factvae": FactVAEConfig}

__all__ = ["CVQVAE", "EMBEDDING_KEY", "METHODS", "MODEL_CONFIGS", "CVQVAEConfig", "FactVAE", "FactVAEConfig", "SCMODAL", "SCMODALConfig",
           "SCMODALModule", "SCMODALWeights", "SCMRDR", "SCMRDRConfig", "IntegrationModel", "read_embedding"]
