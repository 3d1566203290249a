"""MonoFlow: does a non-negative feed-forward constraint make an LM harder to attack?

    python flows/mono_flow.py run                                # config/tiny.toml, offline, CPU
    python flows/mono_flow.py --config config PATH.toml run      # another profile
    python flows/mono_flow.py run --seed 3                       # override the profile's seed

The DAG only: each step reads its artifacts, calls the function that does its work
(`monollm.pipeline` for setup, training and perplexity, `monollm.branches` for the foreach
branches, `monollm.results.answer` for the attack join) and stores what it returns.
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
    reuse_setup = Parameter("reuse-setup", type=str, default=None,
                            help="Take setup (splits, blocks, examples, reference model) from this run (ID or "
                                 "MonoFlow/ID) when its setup configuration and code are this run's (see "
                                 "monollm/setup_reuse.py)")

    @step
    def start(self):
        """Load and validate the profile before any model work."""
        from monollm import config, errors, pipeline

        # a bad key or value: one message naming it, no traceback
        from monollm.results import client
        with errors.user_errors(f"profile {dict(self.config).get('name', '')!r}"):
            cfg = pipeline.start(dict(self.config), self.seed)
        self.resolved_config = config.to_dict(cfg)
        client.tag_current_run(pipeline.tags(cfg))
        self.next(self.setup)

    @resources(**SETUP_STEP)
    @model
    @step
    def setup(self):
        """Data splits, packed blocks (`train_blocks`; `blocks`: val, attack_opt, test), attack
        examples; the foundation model (`reference`)."""
        from monollm import config, errors, pipeline, setup_reuse

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("reference")
        m, d = cfg.model, cfg.data
        self.setup_key, self.setup_origin = setup_reuse.key(self.resolved_config), None
        if self.reuse_setup:  # another run's setup, refused unless its setup key is this one
            done, self.setup_origin = pipeline.reused_setup(self.reuse_setup, self.resolved_config, self.setup_key)
        else:
            with errors.user_errors(f"profile {cfg.name!r}", f"model {m.name!r} or data {d.name or d.path!r}"):
                prep = pipeline.setup(cfg, out)
                done = {name: getattr(prep, name) for name in setup_reuse.ARTIFACTS if name != "reference_model"}
                done["reference_model"] = pipeline.store_model(current, out, "reference")
        # the training blocks apart: only the training steps load them (~400 MB at paper scale)
        for name, value in done.items():  # train_blocks, blocks, examples, ..., reference_model
            setattr(self, name, value)
        self.next(self.train_baseline, self.make_monotonic)

    @card(type="blank", id="training", refresh_interval=5)
    @resources(**TRAIN_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["reference_model"])
    @step
    def train_baseline(self):
        """Recovery training, unconstrained; continues from its last checkpoint after a failure."""
        self.history, self.constraint_checks = self._train_arm("baseline", "reference_model")
        self.next(self.join_models)

    @resources(**CPU_MODEL_STEP)
    @model(load=["reference_model"])
    @step
    def make_monotonic(self):
        """Constrain `reference` (W = softplus(V), or a control mode), verify, save it materialized as
        `monotonic_init`."""
        from monollm import config, pipeline

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir("monotonic_init")
        reference = current.model.loaded["reference_model"]
        with pipeline.step_errors(cfg, current, self, {"reference": reference}):  # one line, no traceback
            self.init_checks = pipeline.make_monotonic(cfg, reference, out)
            self.monotonic_init_model = pipeline.store_model(current, out, "monotonic_init")
        self.next(self.train_monotonic)

    @card(type="blank", id="training", refresh_interval=5)
    @resources(**TRAIN_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["monotonic_init_model"])
    @step
    def train_monotonic(self):
        """Recovery training of the constrained copy, then materialize; resumable like the baseline."""
        self.history, checks = self._train_arm("monotonic", "monotonic_init_model")
        self.constraint_checks = {**self.init_checks, **checks}
        self.next(self.join_models)

    def _train_arm(self, arm: str, start_model: str) -> tuple[list, dict]:
        """The body of both training steps: train `arm` from the model artifact `start_model`,
        store it as `<arm>_model`; (history, constraint checks)."""
        from monollm import checkpoints, config, pipeline
        from monollm.results import cards

        cfg, out = config.from_dict(self.resolved_config), pipeline.tmpdir(arm)
        start = current.model.loaded[start_model]
        ckpt = checkpoints.StepCheckpointer(current, arm, log=pipeline.log, keep=cfg.train.keep_checkpoints,
                                            background=True)  # training goes on while a checkpoint is stored
        with pipeline.step_errors(cfg, current, self, {start_model.removesuffix("_model"): start}):
            done = pipeline.train_arm(cfg, start, {**self.blocks, "train": self.train_blocks}, arm, out,
                                      checkpointer=ckpt,
                                      on_step=cards.live_training(current.card["training"], cfg, arm))
            setattr(self, f"{arm}_model", pipeline.store_model(current, out, arm))
        self.checkpoint_costs = ckpt.times.as_dict()  # what its checkpoints cost (monollm.saving)
        self.ran_on = {current.step_name: done.ran_on}  # device and precision, for the card's Sources
        return done.history, done.constraint

    @step
    def join_models(self, inputs):
        """Both arms' models, histories and constraint checks in one place."""
        from monollm.results import report

        self.training = report.training_table({i.history[0]["arm"]: i.history for i in inputs})
        self.constraint = report.constraint_table(inputs.train_monotonic.constraint_checks)
        self.baseline_model = inputs.train_baseline.baseline_model
        self.monotonic_model = inputs.train_monotonic.monotonic_model
        from monollm.results.answer import older, ran_on

        self.checkpoint_costs = {i.history[0]["arm"]: older(i, "checkpoint_costs") for i in inputs}
        self.ran_on = ran_on([older(i, "ran_on") for i in inputs])
        self.merge_artifacts(inputs, exclude=["history", "constraint_checks", "init_checks", "checkpoint_costs",
                                              "ran_on"])
        self.next(self.evaluate)

    @resources(**MODEL_STEP)
    @model(load=["reference_model", "baseline_model", "monotonic_init_model", "monotonic_model"])
    @step
    def evaluate(self):
        """Perplexity of all four models on the same test blocks; then one branch per attack, and
        the downstream and order-preservation branches beside them."""
        from monollm import branches, config, pipeline
        from monollm.results import client

        cfg = config.from_dict(self.resolved_config)
        dirs = {m: current.model.loaded[artifact] for m, artifact in client.MODEL_ARTIFACTS.items()}
        with pipeline.step_errors(cfg, current, self, dirs):  # a damaged model: which, whose, and what to do
            done = pipeline.evaluate(cfg, dirs, self.blocks["test"])
        from monollm.results import answer, report  # pandas and the statistics: once the models' work has started

        self.per_block = done.per_block
        self.ran_on = answer.ran_on([answer.older(self, "ran_on"), {"evaluate": done.ran_on}])  # for the card
        self.perplexity = report.perplexity_table(self.per_block, cfg.eval.bootstrap, cfg.seed)
        # one line: `end` prints the table, aligned, with the rest of the summary
        pipeline.log("perplexity: " + ", ".join(f"{m} {p:.4g}" for m, p in zip(self.perplexity["model"],
                                                                              self.perplexity["perplexity"])))
        self.branches = branches.names(cfg)
        self.next(self.attack, foreach="branches")

    @card(type="blank", id="attack")
    @resources(**MODEL_STEP)
    @retry(times=RETRIES)
    @checkpoint(load_policy="fresh", show_card=False)
    @model(load=["baseline_model", "monotonic_model"])
    @step
    def attack(self):
        """One attack type against `baseline` and `monotonic` on the same examples (a long attack
        continues from its last checkpoint after a failure); or, in the `downstream` and `order`
        branches, the downstream tasks or order preservation of all four models (the other two
        are loaded in these branches only)."""
        from monollm import branches, checkpoints, config, constants, pipeline

        cfg = config.from_dict(self.resolved_config)
        dirs = {m: current.model.loaded[f"{m}_model"] for m in constants.ARMS}
        if branches.needs_four_models(self.input):  # the other two are loaded in these branches only
            dirs.update({m: current.model.load(getattr(self, f"{m}_model")) for m in ("reference", "monotonic_init")})
            dirs = {m: dirs[m] for m in constants.MODELS}
        ckpt = checkpoints.StepCheckpointer(current, f"attack-{self.input}", log=pipeline.log)  # long attacks
        with pipeline.step_errors(cfg, current, self, dirs):
            done = branches.run(cfg, self.input, dirs, self.examples, checkpoint=ckpt)
        for name, value in vars(done).items():  # attack_rows and token_text, downstream_results or order_results
            setattr(self, name, value)
        from monollm.results import branch_card

        branch_card.fill(current.card["attack"], cfg, self.input, done, log=pipeline.log)  # this branch's own card
        self.next(self.join_attacks)

    @card(type="blank", id="experiment", timeout=120)
    @step
    def join_attacks(self, inputs):
        """The branches' tables in one place; the summary, findings, worst case and budget curves
        computed from them; the experiment card."""
        from monollm import config
        from monollm.results import answer, cards, client

        self.origin_run_id = current.origin_run_id  # the run this one was resumed from (None: not resumed)
        branches = answer.gather(inputs)  # attacks, token_text, downstream, downstream_items, order_preservation
        self.merge_artifacts(inputs, exclude=list(answer.BRANCH_ARTIFACTS))
        cfg = config.from_dict(self.resolved_config)
        done = answer.attack_answer(branches, self.perplexity, self.per_block, self.constraint, self.hidden_act,
                                    thresholds=cfg.attack.thresholds, n_boot=cfg.eval.bootstrap, seed=cfg.seed,
                                    threat_models=cfg.attack.tokens, setting=self.resolved_config["monotonic"],
                                    activation_swap=answer.older(self, "activation_swap"), training=self.training,
                                    compute_targets=cfg.attack.compute_targets)
        # attack_summary, findings, worst_case, worst_case_examples, budget_curve and the gathered tables
        for name, value in {**vars(branches), **vars(done)}.items():
            setattr(self, name, value)
        self.attack_tasks = client.branch_tasks(f"{current.flow_name}/{current.run_id}")  # branch -> its card's task
        current.card["experiment"].extend(cards.experiment(self, current.run_id))
        self.next(self.end)

    @step
    def end(self):
        """Store the summary (every table, then the answer) and write it to a file free of Metaflow's
        log prefixes; print the last screen (the answer and the next commands, results.last_screen);
        record the run this one was resumed from, if any."""
        from monollm.results import client, last_screen

        self.origin_run_id = current.origin_run_id  # also when only `end` ran again
        self.summary = client.summary_text(self, current.run_id)  # every table: in a file, free of the log prefixes
        kept = client.summary_file(self.summary, f"{current.flow_name}/{current.run_id}")
        print(last_screen.render(self, current.run_id, kept))  # the answer and the next commands, 120 columns


if __name__ == "__main__":
    import sys

    from monollm.cli import (check_card_get, check_config_path, check_profile, check_resume_origin, check_runs_here,
                             datastore_note, on_interrupt, resume_notes, resume_tags)
    from monollm.cluster.slurm import use_step_resources

    REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check_config_path(sys.argv, REPO)  # else: where it looked
    check_profile(sys.argv, DEFAULT_PROFILE)  # `run`: a bad key or value is the one line printed, before Metaflow
    datastore_note(sys.argv, REPO)  # `run` or `resume` from outside the repository: which .metaflow it writes to
    on_interrupt(sys.argv, REPO)  # after Ctrl-C: how to resume
    check_runs_here(sys.argv)  # `card ...`, `resume`: no runs from this directory? say where it looked, create nothing
    check_card_get(sys.argv)  # a bare step name: your latest run (named in argv); said which, if it did not succeed
    check_resume_origin(sys.argv)
    resume_notes(sys.argv)  # which run `resume` takes and why; a warning when it already succeeded (nothing reruns)
    # --with slurm: each step's job asks for its @resources, and GPUs of the profile's type (monollm/cluster/slurm.py)
    use_step_resources(gpu_type=config_expr("step_resources(config)['gpu_type']"))
    sys.argv += resume_tags(sys.argv)  # `resume` clones `start`, where a new run tags itself
    try:
        MonoFlow()
    except SystemExit as stop:  # a full datastore disk: the fix and the resume command come last
        from monollm.cli import full_disk_last_words

        last = full_disk_last_words(sys.argv, stop.code, REPO)
        if last:
            print(last, file=sys.stderr, flush=True)
        raise
