"""What the command line offers, as plain data.

`tfmetric --help` answers before TensorFlow is imported (it takes seconds to
start), so the names the commands take live here, without Keras:
`tfm.losses.registry`, `tfm.datasets`, `tfmetric.demo` and `tfmetric.compare`
hold the same names (tests/test_cli.py checks that they agree).
"""

from typing import NamedTuple


class LossChoice(NamedTuple):
    """A key of `tfm.losses.registry.LOSSES` or `PROXY_LOSSES`, its title, and what it does in one line."""

    key: str
    title: str
    summary: str
    variant: bool = False


LOSSES = (
    LossChoice("batch_hard", "batch-hard triplet", "the farthest positive against the closest negative of each anchor"),
    LossChoice("batch_hard_soft", "batch-hard triplet (soft)", "batch-hard with a softplus instead of a margin", True),
    LossChoice("batch_all_nonzero", "batch-all triplet", "every triplet of the batch, averaged over those with a loss"),
    LossChoice("batch_all_all", "batch-all triplet (all)", "every triplet of the batch, averaged over all", True),
    LossChoice("semi_hard", "semi-hard triplet", "the closest negative farther than the positive (FaceNet)"),
    LossChoice("lifted_structure", "lifted structure", "each positive pair against all negatives of both ends"),
    LossChoice("contrastive_hard", "online contrastive (hard)", "positive pairs and as many of the closest negatives"),
    LossChoice(
        "contrastive_all", "online contrastive (all)", "every pair: positives pulled in, negatives past a margin", True
    ),
    LossChoice("margin_dw", "margin loss (dw)", "distances against a learned boundary, distance-weighted negatives"),
    LossChoice("margin_all", "margin loss (all)", "distances against a fixed boundary β, every pair", True),
    LossChoice("npairs", "n-pairs", "a softmax over the batch's similarities, the positives its target"),
    LossChoice("multi_similarity", "multi-similarity", "pairs weighted by their own and their neighbours' similarity"),
    LossChoice("multi_similarity_mined", "multi-similarity (ε)", "multi-similarity with the paper's pair mining", True),
    LossChoice("circle", "circle", "similarities re-weighted towards their optimum (Circle loss)"),
    LossChoice("binomial_deviance", "binomial deviance", "a logistic loss on each pair's similarity"),
    LossChoice("soft_nearest_neighbor", "soft nearest neighbour", "the entanglement of classes at a temperature"),
    LossChoice("nca", "nca", "the probability that a soft nearest neighbour shares the label"),
    LossChoice("supcon", "SupCon", "supervised contrastive: a softmax per positive over the batch"),
    LossChoice("ntxent", "NT-Xent", "SimCLR's normalised, temperature-scaled cross-entropy"),
    LossChoice("instance", "instance loss", "a softmax per anchor over the batch, positives pooled"),
    LossChoice("fast_ap", "FastAP", "average precision through histograms of distances"),
    LossChoice("smooth_ap", "Smooth-AP", "average precision with sigmoid-smoothed ranks"),
    LossChoice("pnp", "PNP", "ranking: the positives ranked behind negatives, penalised"),
    LossChoice("pnp_dq", "PNP-Dq", "PNP with the paper's best decreasing penalty", True),
    LossChoice("ranked_list", "ranked list", "the positives ranked before the negatives by a margin"),
    LossChoice("histogram", "histogram loss", "the overlap of the positive and negative similarity histograms"),
    LossChoice("dynamic_soft_margin", "dynamic soft margin", "a margin learned from the running histogram"),
    LossChoice("angular", "angular", "the angle at the negative of each triplet"),
    LossChoice("tuplet_margin", "tuplet margin", "one positive against all negatives, with a slack margin"),
    LossChoice("intra_pair_variance", "intra-pair variance", "the spread of positive and of negative similarities"),
    LossChoice("threshold_consistent_margin", "threshold-consistent margin", "one threshold for every class"),
    LossChoice("generalized_lifted_structure", "generalised lifted structure", "lifted structure over all positives"),
    LossChoice("snr_contrastive", "SNR contrastive", "contrastive on the signal-to-noise ratio of pairs"),
)

PROXY_LOSSES = (
    LossChoice("arcface", "ArcFace", "softmax over cosines to class vectors, an additive angular margin"),
    LossChoice("cosface", "CosFace", "softmax over cosines to class vectors, an additive cosine margin"),
    LossChoice("sphereface", "SphereFace", "softmax over cosines to class vectors, a multiplicative margin"),
    LossChoice("large_margin_softmax", "large-margin softmax", "L-Softmax: a multiplicative angular margin"),
    LossChoice("subcenter_arcface", "sub-centre ArcFace", "ArcFace with several class vectors per class"),
    LossChoice("normalized_softmax", "normalised softmax", "softmax over cosines to class vectors, no margin"),
    LossChoice("proxy_nca", "ProxyNCA++", "NCA against one proxy per class, at a low temperature"),
    LossChoice("proxy_anchor", "Proxy Anchor", "each proxy against the batch (fast-learning proxies)"),
    LossChoice("soft_triple", "SoftTriple", "a soft triplet loss against several centres per class"),
    LossChoice("p2sgrad", "P2SGrad", "cosine gradients without a margin or scale to tune"),
    LossChoice("manifold", "manifold", "proxies on a random-walk manifold of the batch"),
)

# What `tfmetric demo --loss` takes.
LOSS_KEYS = tuple(choice.key for choice in (*LOSSES, *PROXY_LOSSES))
DEFAULT_LOSS = "batch_hard"

DATASETS = ("digits", "mnist", "fashion_mnist")
PROTOCOLS = ("open", "closed")

# `tfmetric compare`: every method it trains, by title (each loss class once).
BASELINES = ("raw pixels", "untrained encoder")
METHODS = (
    *BASELINES,
    "softmax",
    "softmax + center loss",
    "siamese (random pairs)",
    "triplet (random triplets)",
    *(choice.title for choice in LOSSES if not choice.variant),
    "cross-batch memory",
    *(choice.title for choice in PROXY_LOSSES),
)
ENCODERS = ("mlp", "cnn")
