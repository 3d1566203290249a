"""Names and defaults that several modules share (no imports: any module can use them)."""

MODELS = ("reference", "baseline", "monotonic_init", "monotonic")
"""The four models of a run, in the order every table lists them: the foundation model, the
unconstrained arm after recovery training, the constrained copy before and after it."""
ARMS = ("baseline", "monotonic")
"""The two trained arms; attacks target these."""
MAX_SEED = 2 ** 32 - 1
"""Largest seed: 32 bits, the range every numpy seeding API accepts (np.random.seed and RandomState
take no more), so that one seed can be handed to any library unchanged."""
BUDGET_CEILING = 10 ** 9
"""Most forward passes attack.budget may give each trigger search (a billion sequences: weeks of
GPU time for the smallest hub model); `start` refuses more."""
RESTART_CEILING = 10_000
"""Most restarts of a trigger search: attack.<name>.restarts, and the restarts a budget would take
(the search stops there, monollm.attacks.trigger.MAX_RESTARTS); `start` refuses more."""
STEP_CEILING = 100_000
"""Most steps of one restart of a trigger search (attack.<name>.steps); `start` refuses more."""
DEFAULT_FLOOR = 1e-4
"""Default init floor of the constraint (monotonic.floor)."""
MODES = ("nonneg", "sign_frozen", "abs_init_free")
"""Constraint modes (monotonic.mode): the constraint and its two attribution controls."""
INITS = ("abs", "clip")
"""Where the constrained weights start (monotonic.init)."""
ACTIVATIONS = ("keep", "relu")
"""MLP activation of both arms (monotonic.activation): the model's own, or ReLU swapped in."""
THREAT_MODELS = ("round_trip", "printable")
"""Which tokens an attack may insert (attack.tokens; monollm.attacks.common.allowed_tokens)."""
COMMIT_PATTERN = r"[0-9a-f]{40}"
"""A full git commit hash: the one hub revision that cannot move (a branch or tag can)."""
