"""MonoFlow: does a non-negative feed-forward constraint make an LM harder to attack?

    python flows/mono_flow.py run                                # config/tiny.toml, offline, CPU
    python flows/mono_flow.py --config config PATH.toml run      # another profile
    python flows/mono_flow.py run --seed 3                       # override the profile's seed

The DAG only: every step calls one function of `monollm.pipeline`.
"""
import os

from metaflow import (Config, FlowSpec, Parameter, card, checkpoint, config_expr, current, model, resources,
                      retry, step)

from monollm.profiles import step_resources  # no torch: the decorators below call it

DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "tiny.toml")
# every [resources] default applies when a key is absent (monollm.config.step_resources);
# disk (MB) reaches Kubernetes' ephemeral storage; the training steps may ask for more: several
# GPUs, one training process each (see [parallel]), and /dev/shm for NCCL between them
MODEL_STEP = {key: config_expr(f"step_resources(config)[{key!r}]") for key in ("gpu", "cpu", "memory", "disk")}
TRAIN_STEP = {key: config_expr(f"step_resources(config, train=True)[{key!r}]")
              for key in ("gpu", "cpu", "memory", "disk", "shared_memory")}
# setup uses a GPU only to pretrain a built model; make_monotonic works on the CPU
SETUP_STEP = {key: config_expr(f"step_resources(config, step='setup')[{key!r}]") for key in MODEL_STEP}
CPU_MODEL_STEP = {key: config_expr(f"step_resources(config, step='cpu')[{key!r}]") for key in MODEL_STEP}
RETRIES = config_expr("step_resources(config)['retries']")


class MonoFlow(FlowSpec):
    config = Config("config", default=DEFAULT_PROFILE, parser="monollm.profiles.parse",
                    help="TOML profile (see config/)")
    seed = Parameter("seed", type=int, default=None, help="Override the profile's seed")

    @step
    def start(self):
        """Load and validate the profile before any model work."""
        from monollm import config, pipeline, results

        cfg = pipeline.start(dict(self.config), self.seed)
        self.resolved_config = config.to_dict(cfg)
        results.tag_current_run(pipeline.tags(cfg))
        self.next(self.setup)

    @resources(**SETUP_STEP)
    @model
    @step
    def setup(self):
        """Data splits, packed blocks (`train_blocks`; `blocks`: val, attack_opt, test), attack
        examples; the foundation model (`reference`)."""
        from monollm import config, pipeline

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("reference")
        prep = pipeline.setup(cfg, out)
        # the training blocks apart: only the training steps load them (~400 MB at paper scale)
        self.train_blocks = prep["blocks"].pop("train")
        self.blocks, self.examples = prep["blocks"], prep["examples"]
        self.untrained_perplexity, self.hidden_act = prep["untrained_perplexity"], prep["hidden_act"]
        self.pretraining, self.sources = prep["pretraining"], prep["sources"]
        self.reference_model = current.model.save(out, label="reference", storage_format="files")
        self.next(self.train_baseline, self.make_monotonic)

    @card(type="blank", id="training", refresh_interval=5)
    @resources(**TRAIN_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["reference_model"])
    @step
    def train_baseline(self):
        """Recovery training, unconstrained; continues from its last checkpoint after a failure."""
        from monollm import cards, checkpoints, config, pipeline

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("baseline")
        ckpt = checkpoints.StepCheckpointer(current, "baseline", log=pipeline.log, keep=cfg.train.keep_checkpoints)
        blocks = {**self.blocks, "train": self.train_blocks}
        done = pipeline.train_arm(cfg, current.model.loaded["reference_model"], blocks, "baseline", out,
                                  checkpointer=ckpt,
                                  on_step=cards.live_training(current.card["training"], cfg, "baseline"))
        self.history, self.constraint_checks = done["history"], {}
        self.baseline_model = current.model.save(out, label="baseline", storage_format="files")
        self.next(self.join_models)

    @resources(**CPU_MODEL_STEP)
    @model(load=["reference_model"])
    @step
    def make_monotonic(self):
        """Constrain `reference` (W = softplus(V)), verify, save it materialized as `monotonic_init`."""
        from monollm import config, pipeline

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("monotonic_init")
        self.init_checks = pipeline.make_monotonic(cfg, current.model.loaded["reference_model"], out)
        self.monotonic_init_model = current.model.save(out, label="monotonic_init", storage_format="files")
        self.next(self.train_monotonic)

    @card(type="blank", id="training", refresh_interval=5)
    @resources(**TRAIN_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["monotonic_init_model"])
    @step
    def train_monotonic(self):
        """Recovery training of the constrained copy, then materialize; resumable like the baseline."""
        from monollm import cards, checkpoints, config, pipeline

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("monotonic")
        ckpt = checkpoints.StepCheckpointer(current, "monotonic", log=pipeline.log, keep=cfg.train.keep_checkpoints)
        blocks = {**self.blocks, "train": self.train_blocks}
        done = pipeline.train_arm(cfg, current.model.loaded["monotonic_init_model"], blocks, "monotonic", out,
                                  checkpointer=ckpt,
                                  on_step=cards.live_training(current.card["training"], cfg, "monotonic"))
        self.history, self.constraint_checks = done["history"], {**self.init_checks, **done["constraint"]}
        self.monotonic_model = current.model.save(out, label="monotonic", storage_format="files")
        self.next(self.join_models)

    @step
    def join_models(self, inputs):
        """Both arms' models, histories and constraint checks in one place."""
        from monollm import report

        self.training = report.training_table({i.history[0]["arm"]: i.history for i in inputs})
        self.constraint = report.constraint_table(inputs.train_monotonic.constraint_checks)
        self.baseline_model = inputs.train_baseline.baseline_model
        self.monotonic_model = inputs.train_monotonic.monotonic_model
        self.merge_artifacts(inputs, exclude=["history", "constraint_checks", "init_checks"])
        self.next(self.evaluate)

    @resources(**MODEL_STEP)
    @model(load=["reference_model", "baseline_model", "monotonic_init_model", "monotonic_model"])
    @step
    def evaluate(self):
        """Perplexity of all four models on the same test blocks; then one branch per attack."""
        from monollm import config, pipeline, report

        cfg = config.from_dict(self.resolved_config)
        dirs = {m: current.model.loaded[f"{m}_model"] for m in report.MODELS}
        self.per_block = pipeline.evaluate(cfg, dirs, self.blocks["test"])
        self.perplexity = report.perplexity_table(self.per_block, cfg.eval.bootstrap, cfg.seed)
        print(self.perplexity.to_string(index=False))
        self.attack_names = list(cfg.attacks)
        self.next(self.attack, foreach="attack_names")

    @resources(**MODEL_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["baseline_model", "monotonic_model"])
    @step
    def attack(self):
        """One attack type against `baseline` and `monotonic` on the same examples; a long
        attack continues from its last checkpoint after a failure."""
        from monollm import checkpoints, config, pipeline

        cfg = config.from_dict(self.resolved_config)
        dirs = {m: current.model.loaded[f"{m}_model"] for m in ("baseline", "monotonic")}
        ckpt = checkpoints.StepCheckpointer(current, f"attack-{self.input}", log=pipeline.log)
        self.attack_rows = pipeline.attack(cfg, self.input, dirs, self.examples, checkpoint=ckpt)
        self.next(self.join_attacks)

    @card(type="blank", id="experiment", timeout=120)
    @step
    def join_attacks(self, inputs):
        """Tidy attack table, summaries and findings computed from the tables; the experiment card."""
        import pandas as pd

        from monollm import cards, config, report

        self.origin_run_id = current.origin_run_id  # the run this one was resumed from (None: not resumed)
        self.attacks = pd.concat([i.attack_rows for i in inputs], ignore_index=True)
        self.merge_artifacts(inputs, exclude=["attack_rows"])
        cfg = config.from_dict(self.resolved_config)
        self.attack_summary = report.attack_summary(self.attacks, cfg.attack.thresholds, cfg.eval.bootstrap, cfg.seed)
        self.findings = report.findings(self.perplexity, self.per_block, self.constraint, self.attacks,
                                        self.hidden_act, cfg.eval.bootstrap, cfg.seed)
        current.card["experiment"].extend(cards.experiment(self))
        self.next(self.end)

    @step
    def end(self):
        """Print the headline tables; record the run this one was resumed from, if any."""
        from monollm import results

        self.origin_run_id = current.origin_run_id  # also when only `end` ran again
        print(results.summary_text(self, current.run_id))


if __name__ == "__main__":
    import sys

    from monollm.results import check_resume_origin, resume_tags
    from monollm.slurm import use_step_resources

    check_resume_origin(sys.argv)
    use_step_resources()  # --with slurm: each step's job asks for its @resources (monollm/slurm.py)
    sys.argv += resume_tags(sys.argv)  # `resume` clones `start`, where a new run tags itself
    MonoFlow()
