"""Config keys declare their role once (config.Role, field metadata): the six rules that compare configs are derived
from the roles, so they cannot disagree. Each test states one consequence and checks it against the modules that
apply the rule (compat: resume and branch; consensus: a target's reference; campaign: same run; analysis: the
tables' experiment identity and the keys nothing reads)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from types import SimpleNamespace

from hpc_dsgd import compat, config, consensus
from hpc_dsgd.analysis import runs
from hpc_dsgd.campaign import disk as campaign
from hpc_dsgd.config import (
    BRANCH_MUST_MATCH,
    DEFAULTS,
    FIELDS,
    NOT_IDENTITY,
    REFERENCE_MUST_MATCH,
    RESUME_MAY_DIFFER,
    ROLES,
    SAME_RUN_EXCEPT,
    Config,
    Role,
    inapplicable_keys,
    keys_with_role,
)

IDENTITY = set(keys_with_role(identity=True))
RUN_KEYS = set(keys_with_role(run=True))
BOOKKEEPING = set(keys_with_role(bookkeeping=True))


def test_every_key_has_exactly_one_declared_role():
    assert set(ROLES) == set(FIELDS)
    assert all(isinstance(r, Role) for r in ROLES.values())
    assert IDENTITY | set(NOT_IDENTITY) == set(FIELDS) and not IDENTITY & set(NOT_IDENTITY)


def test_the_modules_apply_the_derived_lists():
    assert compat.BRANCH_MUST_MATCH is BRANCH_MUST_MATCH
    assert set(compat.RESUME_MUST_MATCH_EXCEPT) & set(FIELDS) == set(RESUME_MAY_DIFFER)
    assert consensus.REFERENCE_MUST_MATCH is REFERENCE_MUST_MATCH
    assert campaign.SAME_RUN_EXCEPT is SAME_RUN_EXCEPT
    assert runs.NON_IDENTIFYING & set(FIELDS) == set(NOT_IDENTITY)
    assert not any(runs.is_identifying(k) for k in NOT_IDENTITY)
    assert all(runs.is_identifying(k) for k in IDENTITY)


def test_the_campaigns_same_run_is_the_tables_identity_plus_which_run():
    """A finished run is the plan's run iff it agrees in the tables' identity keys (less the declared bookkeeping
    keys) and in which run of the experiment it is (seed, the files it reads)."""
    compared = set(FIELDS) - set(SAME_RUN_EXCEPT)
    assert compared == (IDENTITY - BOOKKEEPING) | RUN_KEYS
    assert RUN_KEYS <= set(NOT_IDENTITY) and BOOKKEEPING <= IDENTITY


def test_a_key_the_tables_and_the_campaign_ignore_never_blocks_a_resume():
    """The class of the sharpness_every disagreement: what neither names the experiment nor the run (paths,
    resources, measurements) may change on a resume, and bookkeeping keys too."""
    ignored = set(SAME_RUN_EXCEPT)
    assert ignored <= set(RESUME_MAY_DIFFER)
    assert {"sharpness_every", "sharpness_samples", "name", "out_dir", "device"} <= ignored


def test_what_a_branch_or_a_reference_must_share_is_the_experiment_and_never_free_on_resume():
    for must in (set(BRANCH_MUST_MATCH), set(REFERENCE_MUST_MATCH)):
        assert must <= IDENTITY | RUN_KEYS
        assert not must & set(RESUME_MAY_DIFFER)
    # a target's reference: the same optimisation (rates, schedule, momentum, ...) and seed (issue 26)
    assert {"base_lr", "lr_schedule", "decay_fractions", "warmup_lr", "momentum", "nesterov", "weight_decay",
            "optimizer", "seed", "n", "topology", "dataset", "model", "epochs", "batch_size"} <= set(REFERENCE_MUST_MATCH)
    assert set(BRANCH_MUST_MATCH) <= set(REFERENCE_MUST_MATCH)  # the graph is what a branch may change


def test_inapplicable_keys_are_identity_keys_of_another_optimizer_schedule_or_workload():
    seen = set()
    for ds, model, opt, sched in itertools.product(("digits", "multi30k"), ("resnet20", "transformer"),
                                                   ("sgd", "adam"), ("step", "inverse_sqrt")):
        skip = inapplicable_keys({"dataset": ds, "model": model, "optimizer": opt, "lr_schedule": sched})
        assert skip <= IDENTITY, skip - IDENTITY
        seen |= skip
    assert {"momentum", "adam_betas", "base_lr", "warmup_steps", "width", "d_model"} <= seen
    assert "width" not in inapplicable_keys({"dataset": "digits"})
    assert "d_model" in inapplicable_keys({"dataset": "digits"})
    assert {"width", "momentum"} <= inapplicable_keys({"dataset": "multi30k", "model": "transformer", "optimizer": "adam"})
    assert "d_model" in inapplicable_keys({"dataset": ["not", "a", "name"], "model": "resnet20"})  # a damaged trace's


def test_sharpness_every_on_a_finished_run_is_the_same_run_the_same_experiment_and_resumable():
    """The known disagreement, fixed: the campaign no longer calls it a changed config, as the tables never did."""
    done = Config(name="r", seed=1).to_dict()
    plan = dict(done, sharpness_every=5, sharpness_samples=64, checkpoint_minutes=5.0)
    assert campaign.config_diff(SimpleNamespace(cfg=plan), done) == []
    assert runs.identity(done) == runs.identity(dict(done, sharpness_every=5, sharpness_samples=64))
    assert compat.check_compatible({"config_json": json.dumps(done)}, plan, exclude=compat.RESUME_MUST_MATCH_EXCEPT) == []
    # what does name the run still does, in both
    other = dict(done, seed=2, base_lr=0.2)
    assert campaign.config_diff(SimpleNamespace(cfg=other), done) == ["base_lr: finished=0.1 plan=0.2",
                                                                       "seed: finished=1 plan=2"]
    assert runs.identity(other)["base_lr"] == 0.2 and "seed" not in runs.identity(other)


def test_config_and_the_workload_registry_import_and_validate_without_torch():
    code = ("import sys; from hpc_dsgd.config import from_dict, inapplicable_keys; "
            "from hpc_dsgd.workloads import spec_of; "
            "from_dict({'dataset': 'multi30k', 'model': 'transformer', 'optimizer': 'adam', 'lr_schedule': "
            "'inverse_sqrt', 'decay_fractions': [], 'policies': ['gossip']}); "
            "inapplicable_keys({}); spec_of('cifar10').validate(from_dict({})); "
            "print(sorted(m for m in ('torch', 'torchvision', 'mpi4py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout


def test_defaults_come_from_the_fields():
    assert DEFAULTS == Config().to_dict() and config.FIELDS["seed"].metadata["role"] is config.SEED
