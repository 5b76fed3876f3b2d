"""Out-of-core linear reductions of a store's cells (PCA for RNA/protein, LSI for peaks) and their use in the stream.

>>> from cellweave.data import Preprocess, open_modality
>>> rna = open_modality("rna.zarr")                                        # doctest: +SKIP
>>> pca = fit_pca(rna, 50, preprocess=Preprocess(n_top_genes=2000))       # doctest: +SKIP
>>> pca.save("rna.zarr/.cellweave/my_pca"); z = pca.transform(counts)     # doctest: +SKIP
"""

from .cache import reduced_store
from .fit import fit_lsi, fit_pca, load_or_fit
from .reduction import InputTransform, Reduction
from .stream import ReducedPairedStream, raw_features

__all__ = ["InputTransform", "ReducedPairedStream", "Reduction", "fit_lsi", "fit_pca", "load_or_fit", "raw_features", "reduced_store"]
