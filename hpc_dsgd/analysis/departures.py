"""Where this reproduction departs from Kong et al. (ICML 2021): one line each, kept here as data so that the foot of
every `--paper` table (tools/tables.py) and the README quote the same list."""

DEPARTURES = (
    "Model evaluated: the averaged model of the replicas at the final epoch (the paper does not say which model "
    "or epoch its tables report).",
    "Spread: mean ± sample standard deviation over seeds (ddof=1); the paper does not say which std it reports.",
    "Seeds: three per cell, also for Table 4 at n=64 (the paper: two); Figure 3 shows the seeds its campaign plan "
    "runs (the paper: one run).",
    "Consensus control caps the gossip steps per iteration at max_gossip_steps=50 and counts the iterations that "
    "hit the cap (the paper states no cap).",
    "Multi30k Transformer: 3 encoder and 3 decoder layers, 100 epochs (the paper's exact size and length are not "
    "all stated).",
    "Weight decay 1e-4 is this project's choice (not stated for every table in the paper).",
    "The seed-004 large-batch recipe (ResNet-20 on CIFAR-10, n=16, ring and exponential graph against C-SGD, "
    "warm-up 5 epochs at batch 64 and 30 at batch 512, each method at its own swept rate) is the project's own, "
    "not the paper's.",
    "Target reference: a dec-phase-k target is a factor times Ξ_max of the same dec-phase-k experiment's "
    "uncontrolled run (gossip in phase k, All-Reduce elsewhere); an interpretation of the paper's 'normal "
    "(uncontrolled) decentralized training', which also names the all-ring run (the tables' notes give that "
    "reading's value where the all-ring run is among the traces).",
)
