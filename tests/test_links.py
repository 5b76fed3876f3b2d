"""Feature links: the antibody table on real CITE-seq data, name normalisation, (cols, W), gene activity, TSV, errors."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from cellweave.errors import InputError
from cellweave.links import (
    AntibodyTable,
    FeatureLinks,
    auto_links,
    gene_activity,
    is_isotype_control,
    load_table,
    normalize_protein_name,
    parse_peaks,
    protein_to_gene,
    read_links,
    require_links,
    shared_names,
    write_links,
)
from cellweave.links.gene_activity import chrom_key, read_genes_bed
from cellweave.links.names import name_key

from .conftest import CITE_SEQ, require_shared

# ---------------------------------------------------------------- real CITE-seq data

@pytest.fixture(scope="module")
def cite():
    ad = pytest.importorskip("anndata")
    path = require_shared(CITE_SEQ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's old encoding: anndata warns once per element
        adata = ad.read_h5ad(path)
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return list(map(str, adata.uns["protein_names"])), list(adata.var_names), X, np.asarray(adata.obsm["protein_expression"])


def test_every_cite_seq_protein_links_to_genes_in_x(cite):
    proteins, genes, _, _ = cite
    links = protein_to_gene(proteins, genes)
    summary = links.summary(proteins, genes)
    non_isotype = [p for p in proteins if not is_isotype_control(p)]
    print(f"\n{summary}")
    assert len(non_isotype) == 14
    assert summary.n_source_linked == 14, summary.dropped
    assert set(links.table["target_feature"]) <= set(genes)
    by_protein = links.table.groupby("source_feature")["target_feature"].apply(set).to_dict()
    assert by_protein["CD3_TotalSeqB"] == {"CD3E", "CD3D", "CD3G"}
    assert by_protein["CD8a_TotalSeqB"] == {"CD8A"}
    assert by_protein["CD16_TotalSeqB"] == {"FCGR3A"}  # FCGR3B is not among this file's genes
    assert by_protein["CD56_TotalSeqB"] == {"NCAM1"}
    assert by_protein["PD-1_TotalSeqB"] == {"PDCD1"}
    assert by_protein["CD127_TotalSeqB"] == {"IL7R"}
    assert by_protein["CD45RA_TotalSeqB"] == by_protein["CD45RO_TotalSeqB"] == {"PTPRC"}


def test_linked_genes_correlate_with_their_proteins(cite):
    """Real-data sanity check: linked protein vs gene expression Spearman is positive and beats random genes."""
    proteins, genes, X, P = cite
    links = protein_to_gene(proteins, genes)
    cols, W = links.to_matrix(proteins, genes)
    linked_rna = X @ W.T
    rho = np.array([spearmanr(P[:, c], linked_rna[:, i]).statistic for i, c in enumerate(cols)])
    per_protein = ", ".join(f"{proteins[c]} {r:.2f}" for c, r in zip(cols, rho))
    print(f"\nSpearman per protein: {per_protein}; mean {rho.mean():.3f}")
    assert rho.mean() > 0.2
    assert (rho > 0).sum() >= 12
    expressed = np.flatnonzero((X > 0).mean(axis=0) > 0.2)
    rng = np.random.default_rng(0)
    random_rho = [np.nanmean([spearmanr(P[:, c], X[:, rng.choice(expressed)]).statistic for c in cols]) for _ in range(5)]
    print(f"random genes: mean Spearman {np.round(random_rho, 3)}")
    assert rho.mean() > max(random_rho) + 0.15


# ---------------------------------------------------------------- names and the table

@pytest.mark.parametrize("name, genes", [
    ("CD3_TotalSeqB", {"CD3E", "CD3D", "CD3G"}),
    ("CD3_TotalSeqA", {"CD3E", "CD3D", "CD3G"}),
    ("CD4_TotalC", {"CD4"}),
    ("CD45RA_TotalA", {"PTPRC"}),
    ("ADT_CD19", {"CD19"}),
    ("CD19-ADT", {"CD19"}),
    ("HLA-DR", {"HLA-DRA", "HLA-DRB1"}),
    ("HLADR", {"HLA-DRA", "HLA-DRB1"}),
    ("hla_dr", {"HLA-DRA", "HLA-DRB1"}),
    ("HLA.DR", {"HLA-DRA", "HLA-DRB1"}),
    ("Hu.CD8a_RPA-T8", {"CD8A"}),
    ("anti-human CD4", {"CD4"}),
    ("A0034_anti-human_CD3", {"CD3E", "CD3D", "CD3G"}),
    ("Mouse_CD3e", {"CD3E"}),
    ("CD4|RPA-T4", {"CD4"}),
    ("CD279_EH12.2H7_TotalSeqC", {"PDCD1"}),
    ("PD-1", {"PDCD1"}),
    ("pd 1", {"PDCD1"}),
    ("CD16", {"FCGR3A", "FCGR3B"}),
    ("CD56", {"NCAM1"}),
    ("CD11b", {"ITGAM"}),
    ("CD127", {"IL7R"}),
    ("CD25", {"IL2RA"}),
    ("CD20", {"MS4A1"}),
    ("IgD", {"IGHD"}),
    ("IgM_TotalSeqC", {"IGHM"}),
    ("TCR α/β", {"TRAC", "TRBC1", "TRBC2"}),
    ("IFN-γ", {"IFNG"}),
    ("141Pr_CD38", {"CD38"}),
    ("CD38(Pr141)Di", {"CD38"}),
    ("Cd111Di_CD45", {"PTPRC"}),
    ("CD111", {"NECTIN1"}),
    ("CD90 (Thy1)", {"THY1"}),
    ("SSEA-1 (CD15)", {"FUT4"}),
    ("CD307c/FcRL3", {"FCRL3"}),
    ("CD158 (KIR2DL1/S1/S3/S5)", {"KIR2DL1", "KIR2DS1", "KIR2DS3", "KIR2DS5"}),
    ("HLA-A,B,C", {"HLA-A", "HLA-B", "HLA-C"}),
])
def test_lookup_normalises_panel_names(name, genes):
    entry = load_table().lookup(name)
    assert entry is not None and set(entry.genes) == genes


@pytest.mark.parametrize("name, isotype", [
    ("IgG1_control_TotalSeqB", True), ("Mouse_IgG1", True), ("Rat IgG2b", True), ("Mouse IgG2a, κ isotype Ctrl", True),
    ("Mouse_IgM", True), ("IgG2b", True), ("Armenian Hamster IgG", True),
    ("IgD", False), ("IgM", False), ("IgG Fc", False), ("CD3_TotalSeqB", False), ("Mouse_CD3e", False),
])
def test_isotype_controls(name, isotype):
    assert is_isotype_control(name) is isotype


def test_isotypes_are_never_linked():
    links = protein_to_gene(["IgG1_control_TotalSeqB", "Mouse_IgM", "IgM", "CD3"], ["IGHM", "CD3E"])
    assert set(links.table["source_feature"]) == {"IgM", "CD3"}
    assert links.dropped == {"IgG1_control_TotalSeqB": "isotype control", "Mouse_IgM": "isotype control"}


def test_normalised_keys():
    assert normalize_protein_name("HLA-DR") == normalize_protein_name("HLADR") == normalize_protein_name("hla_dr") == "hladr"
    assert normalize_protein_name("CD3_TotalSeqB") == normalize_protein_name("Hu.CD3") == "cd3"
    assert normalize_protein_name("anti-human_PD-1") == normalize_protein_name("PD 1") == "pd1"
    assert name_key("TCRγδ") == "tcrgd"


def test_shipped_table_is_large_and_consistent():
    table = load_table()
    assert len(table) >= 250
    for entry in table.entries:
        assert entry.genes and all(g and g.strip() == g and " " not in g for g in entry.genes), entry
    # the index raises on a name given to two entries with different genes; check that it does
    with pytest.raises(InputError, match="also names"):
        AntibodyTable.from_frame(pd.DataFrame({"protein": ["CD8", "CD8b"], "genes": ["CD8A", "CD8B"],
                                               "aliases": ["", "CD8"]}))


def test_user_table_and_case_insensitive_genes(tmp_path):
    path = tmp_path / "panel.tsv"
    path.write_text("protein\tgenes\taliases\nFoo\tGENE1,GENE2\tFoo antigen\n")
    links = protein_to_gene(["Foo_TotalSeqB", "foo antigen", "CD3"], ["Gene1", "GENE2"], table=path)
    assert links.table.values.tolist() == [["Foo_TotalSeqB", "Gene1", 1.0], ["Foo_TotalSeqB", "GENE2", 1.0],
                                           ["foo antigen", "Gene1", 1.0], ["foo antigen", "GENE2", 1.0]]
    assert "antibody table" in links.dropped["CD3"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("protein\tgenes\nFoo\t\n")
    with pytest.raises(InputError, match=r"line 2, column 'genes'"):
        protein_to_gene(["Foo"], ["GENE1"], table=bad)


def test_mouse_genes_match_case_insensitively():
    links = protein_to_gene(["CD3", "CD19", "NK1.1"], ["Cd3e", "Cd3g", "Cd19", "Klrb1c"])
    assert set(map(tuple, links.table[["source_feature", "target_feature"]].values)) == {
        ("CD3", "Cd3e"), ("CD3", "Cd3g"), ("CD19", "Cd19"), ("NK1.1", "Klrb1c")}


# ---------------------------------------------------------------- to_matrix and summary

def _dense_reference(table: pd.DataFrame, sources: list[str], targets: list[str], reduce: str):
    """Loop-built (cols, W) from the definition."""
    cols = sorted({sources.index(s) for s, t in zip(table.source_feature, table.target_feature)
                   if s in sources and t in targets})
    W = np.zeros((len(cols), len(targets)))
    for s, t, w in table.itertuples(index=False):
        if s in sources and t in targets:
            W[cols.index(sources.index(s)), targets.index(t)] += w
    if reduce == "mean":
        W /= W.sum(axis=1, keepdims=True)
    return np.array(cols), W


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_to_matrix_matches_hand_built_dense(reduce):
    table = pd.DataFrame({"source_feature": ["p3", "p3", "p3", "p1", "p9", "p2", "p2"],
                          "target_feature": ["gA", "gB", "gZ", "gC", "gA", "gB", "gB"],
                          "weight": [1.0, 3.0, 5.0, 2.0, 1.0, 0.5, 0.25]})
    links = FeatureLinks("protein", "rna", table, reduce=reduce)
    sources, targets = ["p0", "p1", "p2", "p3"], ["gC", "gB", "gA", "gD"]
    cols, W = links.to_matrix(sources, targets)
    ref_cols, ref_W = _dense_reference(table, sources, targets, reduce)
    np.testing.assert_array_equal(cols, ref_cols)
    assert cols.dtype == np.int64 and W.dtype == np.float32 and isinstance(W, np.ndarray)
    np.testing.assert_allclose(W, ref_W, rtol=1e-6)
    if reduce == "mean":  # p3 averages gA and gB (gZ absent); p2's duplicate links add up before averaging
        np.testing.assert_allclose(W[2], [0, 0.75, 0.25, 0], rtol=1e-6)
    cols_sp, W_sp = links.to_matrix(sources, targets, sparse=True)
    assert sp.issparse(W_sp) and W_sp.dtype == np.float32
    np.testing.assert_array_equal(cols_sp, cols)
    np.testing.assert_allclose(W_sp.toarray(), W)
    x_s, x_t = np.random.default_rng(0).random((5, 4)), np.random.default_rng(1).random((5, 4))
    assert (x_s[:, cols].shape == (x_t @ W.T).shape == (5, 3))


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_to_matrix_with_no_overlap_is_empty(reduce):
    links = FeatureLinks("a", "b", pd.DataFrame({"source_feature": ["x"], "target_feature": ["y"]}), reduce=reduce)
    cols, W = links.to_matrix(["q"], ["y", "z"])
    assert cols.shape == (0,) and W.shape == (0, 2)


def test_to_matrix_goes_sparse_when_dense_would_be_large():
    targets = [f"chr1:{i}-{i + 1}" for i in range(5000)]
    links = FeatureLinks("rna", "atac", pd.DataFrame({"source_feature": [f"g{i}" for i in range(4000)],
                                                      "target_feature": targets[:4000]}))
    cols, W = links.to_matrix([f"g{i}" for i in range(4000)], targets)
    assert sp.issparse(W) and W.shape == (4000, 5000) and W.nnz == 4000


def test_summary_counts_and_reasons():
    links = protein_to_gene(["CD3", "CD4", "IgG1_control", "Mystery"], ["CD3E", "CD3D", "CD4", "MS4A1"])
    s = links.summary()
    assert (s.n_links, s.n_source_linked, s.n_target_used) == (3, 2, 3)
    assert s.dropped == {"IgG1_control": "isotype control", "Mystery": links.dropped["Mystery"]}
    restricted = links.summary(["CD3", "CD4", "CD19"], ["CD3E", "MS4A1"])
    assert (restricted.n_source_linked, restricted.n_target_used) == (1, 1)
    assert "none of its linked rna features" in restricted.dropped["CD4"]
    assert restricted.dropped["CD19"] == "no link given"
    text = str(s)
    assert "2 protein features linked to 3 rna features" in text and "isotype control" in text


def test_shared_names_case_insensitive():
    links = shared_names(["Cd3e", "CD4", "MS4A1", "XIST"], ["CD3E", "CD4", "cd4", "ms4a1"])
    pairs = dict(zip(links.table.source_feature, links.table.target_feature))
    assert pairs == {"Cd3e": "CD3E", "CD4": "CD4", "MS4A1": "ms4a1"}
    assert list(links.dropped) == ["XIST"]
    strict = shared_names(["Cd3e", "CD4"], ["CD3E", "CD4"], case_sensitive=True)
    assert list(strict.table.source_feature) == ["CD4"]


# ---------------------------------------------------------------- gene activity

def _random_genome(rng, n_peaks: int, n_genes: int):
    chroms = np.array(["chr1", "chr2", "chrX"])
    p_chrom = rng.choice(chroms, n_peaks)
    p_start = rng.integers(0, 200_000, n_peaks)
    p_end = p_start + rng.integers(1, 1500, n_peaks)
    names = [f"{c}{rng.choice([':', '-', '_'])}{s}{'-' if rng.random() < 0.5 else '_'}{e}"
             for c, s, e in zip(p_chrom, p_start, p_end)]
    g_chrom = rng.choice(np.array(["chr1", "2", "chrX", "chrY"]), n_genes)  # "2" = "chr2"; no peak on chrY
    g_start = rng.integers(0, 200_000, n_genes)
    g_end = g_start + rng.integers(1, 30_000, n_genes)
    strand = rng.choice(np.array(["+", "-", "."]), n_genes)
    bed = pd.DataFrame({"chrom": g_chrom, "start": g_start, "end": g_end, "name": [f"G{i}" for i in range(n_genes)],
                        "score": 0, "strand": strand})
    return names, bed


def _brute_force(peak_names, bed, gene_names, upstream):
    chrom, p_start, p_end = parse_peaks(peak_names)
    pairs = set()
    for _, g in bed.iterrows():
        if g["name"] not in gene_names:
            continue
        ws = max(g.start - upstream, 0) if g.strand == "+" else g.start
        we = g.end + upstream if g.strand == "-" else g.end
        hit = (chrom == chrom_key(g.chrom)) & (p_start < we) & (p_end > ws)
        pairs |= {(g["name"], peak_names[i]) for i in np.flatnonzero(hit)}
    return pairs


@pytest.mark.parametrize("seed, upstream", [(0, 2000), (1, 0), (2, 10_000)])
def test_gene_activity_matches_brute_force(seed, upstream):
    rng = np.random.default_rng(seed)
    peaks, bed = _random_genome(rng, 400, 150)
    gene_names = [f"G{i}" for i in range(0, 150, 2)] + ["NOT_IN_BED"]
    links = gene_activity(peaks, bed, gene_names, upstream=upstream)
    got = set(zip(links.table.source_feature, links.table.target_feature))
    expected = _brute_force(peaks, bed, set(gene_names), upstream)
    assert got == expected and len(expected) > 50
    assert links.kind == "gene_activity" and links.reduce == "sum"
    assert links.dropped["NOT_IN_BED"] == "not in the genes BED"
    on_y = [n for n, c in zip(bed["name"], bed["chrom"]) if c == "chrY" and n in gene_names]
    assert on_y and all(links.dropped[n].startswith("no peak") for n in on_y)
    cols, W = links.to_matrix(gene_names, peaks)  # gene activity: each row sums the gene's peaks
    np.testing.assert_array_equal(W.sum(axis=1), [sum(1 for g, _ in expected if g == gene_names[c]) for c in cols])


def test_gene_activity_strands_and_upstream_by_hand(tmp_path):
    bed = tmp_path / "genes.bed"
    bed.write_text("track name=genes\n# comment\n"
                   "chr1\t1000\t2000\tPLUS\t0\t+\n"
                   "chr1\t5000\t6000\tMINUS\t0\t-\n"
                   "1\t9000\t9500\tNOSTRAND\t0\t.\n")
    peaks = ["chr1:500-700", "chr1-1999-2100", "chr1_6000_6100", "chr1:6900-7100", "chr1:4000-4999",
             "chr1:8900-9000", "chr2:1500-1600", "chrM:1-2"]
    links = gene_activity(peaks, bed, ["PLUS", "MINUS", "NOSTRAND"], upstream=500)
    got = set(zip(links.table.source_feature, links.table.target_feature))
    assert got == {("PLUS", "chr1:500-700"), ("PLUS", "chr1-1999-2100"), ("MINUS", "chr1_6000_6100")}
    assert "NOSTRAND" in links.dropped  # "." strand: body only, the peak ends where the gene starts (half-open)


def test_read_genes_bed_errors(tmp_path):
    bed = tmp_path / "genes.bed"
    bed.write_text("chr1\t10\t20\tA\t0\t+\nchr1\tx\t20\tB\t0\t+\n")
    with pytest.raises(InputError, match=r"line 2, column 2 \(start\)"):
        read_genes_bed(bed)
    bed.write_text("chr1\t10\t20\tA\n")
    with pytest.raises(InputError, match="line 1.*BED6 needs 6"):
        read_genes_bed(bed)
    bed.write_text("chr1\t10\t20\tA\t0\t*\n")
    with pytest.raises(InputError, match="strand"):
        read_genes_bed(bed)
    with pytest.raises(InputError, match="not peaks"):
        parse_peaks(["chr1:1-2", "GAPDH"])


def test_parse_peaks_formats():
    chrom, start, end = parse_peaks(["chr1:10-20", "chr2-30-40", "chrX_50_60", "chrUn_KI270302v1_70_80", "MT:1-2",
                                     "chrM-3-4"])
    assert list(chrom) == ["1", "2", "x", "un_ki270302v1", "mt", "mt"]
    assert start.tolist() == [10, 30, 50, 70, 1, 3] and end.tolist() == [20, 40, 60, 80, 2, 4]


def test_gene_activity_is_fast_on_many_peaks():
    rng = np.random.default_rng(3)
    n = 200_000
    chrom = rng.choice([f"chr{i}" for i in range(1, 23)], n)
    start = rng.integers(0, 200_000_000, n)
    peaks = [f"{c}:{s}-{s + 500}" for c, s in zip(chrom, start)]
    g_start = rng.integers(0, 200_000_000, 20_000)
    bed = pd.DataFrame({"chrom": rng.choice([f"chr{i}" for i in range(1, 23)], 20_000), "start": g_start,
                        "end": g_start + rng.integers(1000, 100_000, 20_000), "name": [f"G{i}" for i in range(20_000)],
                        "strand": rng.choice(["+", "-"], 20_000)})
    t0 = time.perf_counter()
    links = gene_activity(peaks, bed, list(bed["name"]))
    assert time.perf_counter() - t0 < 20 and len(links) > 1000


# ---------------------------------------------------------------- TSV and errors

def test_tsv_round_trip(tmp_path):
    links = protein_to_gene(["CD3_TotalSeqB", "CD4", "IgG1_control"], ["CD3E", "CD3D", "CD4"])
    path = tmp_path / "links.tsv"
    links.to_tsv(path)
    back = FeatureLinks.from_tsv(path)
    pd.testing.assert_frame_equal(back.table, links.table)
    assert (back.pair, back.kind, back.reduce) == (("protein", "rna"), "protein_to_gene", "mean")
    assert back.dropped == links.dropped
    empty = tmp_path / "empty.tsv"
    protein_to_gene(["IgG1_control"], ["CD4"]).to_tsv(empty)
    empty_back = FeatureLinks.from_tsv(empty)
    assert len(empty_back) == 0 and empty_back.dropped == {"IgG1_control": "isotype control"}
    for a, b in zip(back.to_matrix(["CD3_TotalSeqB", "CD4"], ["CD4", "CD3D", "CD3E"]),
                    links.to_matrix(["CD3_TotalSeqB", "CD4"], ["CD4", "CD3D", "CD3E"])):
        np.testing.assert_array_equal(a, b)
    many = tmp_path / "many.tsv"
    other = shared_names(["CD4"], ["CD4"], "spatial", "rna")
    write_links(many, [links, other])
    assert [(x.pair, x.kind, len(x)) for x in read_links(many)] == [
        (("protein", "rna"), "protein_to_gene", 3), (("spatial", "rna"), "shared_names", 1)]


def test_read_user_links_with_several_pairs(tmp_path):
    path = tmp_path / "user.tsv"
    path.write_text("# my links\nsource_modality\tsource_feature\ttarget_modality\ttarget_feature\n"
                    "adt\tCD3\trna\tCD3E\nadt\tCD3\trna\tCD3D\n\ncyto\tCD4\trna\tCD4\n")
    adt, cyto = read_links(path, modalities={"adt", "cyto", "rna"})
    assert adt.pair == ("adt", "rna") and cyto.pair == ("cyto", "rna") and adt.reduce == "mean"
    _, W = adt.to_matrix(["CD3"], ["CD3E", "CD3D"])
    np.testing.assert_allclose(W, [[0.5, 0.5]])
    path.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\tweight\n"
                    "rna\tGENE\tatac\tchr1:1-2\t2\nrna\tGENE\tatac\tchr1:5-9\t\n")
    (links,) = read_links(path)
    _, W = links.to_matrix(["GENE"], ["chr1:1-2", "chr1:5-9"])
    np.testing.assert_allclose(W, [[2.0, 1.0]])  # with a weight column, weights are summed as given


@pytest.mark.parametrize("text, where", [
    ("source_modality\tsource_feature\ttarget_modality\n", r"line 1, column 'target_feature'"),
    ("# c\nsource_modality\tsource_feature\ttarget_modality\ttarget_feature\nadt\tCD3\trna\tCD3E\nadt\tCD4\trna\n",
     r"line 4, column 4 \(target_feature\)"),
    ("source_modality\tsource_feature\ttarget_modality\ttarget_feature\nadt\tCD3\tRNA\tCD3E\n",
     r"line 2, column 3 \(target_modality\): unknown modality 'RNA'"),
    ("source_modality\tsource_feature\ttarget_modality\ttarget_feature\tweight\nadt\tCD3\trna\tCD3E\tlots\n",
     r"line 2, column 5 \(weight\)"),
    ("source_modality\tsource_feature\ttarget_modality\ttarget_feature\nrna\tA\trna\tB\n", r"line 2.*itself"),
])
def test_malformed_tsv_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=where) as err:
        read_links(path, modalities={"adt", "rna"})
    assert str(path) in str(err.value)


def test_from_tsv_refuses_several_pairs(tmp_path):
    path = tmp_path / "two.tsv"
    path.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\na\tx\tb\ty\nc\tx\tb\ty\n")
    with pytest.raises(InputError, match="read_links"):
        FeatureLinks.from_tsv(path)


def test_require_links_explains_the_fix():
    links = protein_to_gene(["Foo_TotalSeqB", "IgG1_control", "CD3"], ["GAPDH"])
    with pytest.raises(InputError) as err:
        require_links(links)
    message = str(err.value)
    for part in ("protein -> rna", "0 protein features are linked", "'Foo_TotalSeqB'", "--links FILE",
                 "source_modality, source_feature, target_modality, target_feature"):
        assert part in message, message
    ok = protein_to_gene(["CD3", "CD4"], ["CD3E", "CD4"])
    assert require_links(ok, min_links=2) is ok
    with pytest.raises(InputError, match="1 protein features are linked"):
        require_links(ok, min_links=2, source_features=["CD3", "CD4"], target_features=["CD4"])


def test_auto_links(tmp_path):
    bed = pd.DataFrame({"chrom": ["chr1"], "start": [1000], "end": [2000], "name": ["CD4"], "strand": ["+"]})
    modalities = {
        "rna": ("rna", ["CD3E", "CD4", "MS4A1"]),
        "adt": ("adt", ["CD3_TotalSeqB", "CD20_TotalSeqB", "IgG1_control"]),
        "atac": ("atac", ["chr1:900-1100", "chr2:1-5"]),
        "ga": ("gene_activity", ["cd4", "MS4A1"]),
        "flow": ("cytometry", ["FSC-A", "CD4"]),
    }
    links = auto_links(modalities, genes_bed=bed)
    assert set(links) == {("adt", "rna"), ("rna", "atac"), ("ga", "rna"), ("flow", "rna")}
    assert set(links[("adt", "rna")].table.target_feature) == {"CD3E", "MS4A1"}
    assert links[("rna", "atac")].table.values.tolist() == [["CD4", "chr1:900-1100", 1.0]]
    assert links[("ga", "rna")].kind == "shared_names" and len(links[("ga", "rna")]) == 2
    assert links[("flow", "rna")].table.values.tolist() == [["CD4", "CD4", 1.0]]
    with pytest.raises(InputError, match="genes_bed"):
        auto_links(modalities)
    with pytest.raises(InputError, match="unknown modality kind 'scrna'"):
        auto_links({"x": ("scrna", ["A"])})
