"""One source of truth for per-model facts (timm_ssm_prune/models/facts.py): the registry, the cards and the
README's model table all read it, and the README fails this test when it drifts."""
from pathlib import Path

import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune import hub
from timm_ssm_prune.models import plainmamba, vim
from timm_ssm_prune.models.facts import FACTS, TRAINING_FREE

README = Path(__file__).resolve().parent.parent / 'README.md'


def test_readme_model_table_is_generated_from_the_facts():
    assert not hub.update_readme_table(README, check=True), \
        "README's model table is out of date: run `python tools/make_hub_configs.py`"


def test_the_table_check_can_fail(tmp_path):
    stale = tmp_path / 'README.md'
    stale.write_text(README.read_text().replace('| 7.55 M |', '| 7.56 M |'))
    assert hub.update_readme_table(stale, check=True)
    assert hub.update_readme_table(stale) and not hub.update_readme_table(stale, check=True)


def test_every_registered_model_has_facts_and_the_registry_reads_them():
    for name in hub.package_models():
        base = name[:-len('_pruned')] if name.endswith('_pruned') else name
        assert base in FACTS, name
        cfg = timm.create_model(name, device='meta').pretrained_cfg
        facts = FACTS[base]
        if facts.hub:
            assert (cfg['hf_hub_id'], cfg['hf_hub_filename']) == facts.hub
        if not name.endswith('_pruned') and not facts.shipped:
            assert f'top-1 {facts.top1}' in cfg['notes']
    assert {f'plainmamba_{k}': v for k, v in plainmamba.PRUNED_DEFAULTS.items()} == \
        {n: dict(f.pruned, **TRAINING_FREE['plainmamba']) for n, f in FACTS.items()
         if n.startswith('plainmamba') and f.pruned}
    assert {n: dict(f.pruned, **TRAINING_FREE['vim']) for n, f in FACTS.items() if n.startswith('vim') and f.pruned} \
        == {f'vim_{k}_patch16_224': v for k, v in vim.PRUNED_DEFAULTS.items()}
    for name, facts in FACTS.items():
        assert bool(facts.shipped) == bool(facts.trained), name  # shipped weights say how they were trained
        if facts.pruned:
            m = timm.create_model(f'{name}_pruned', device='meta')
            assert m.prune_cfg.prune_layers == facts.pruned['prune_layers']
            assert set(m.prune_cfg.keep_rates) == {facts.pruned['keep_rate']}
            family = 'vim' if name.startswith('vim') else 'plainmamba'
            assert all(getattr(m.prune_cfg, k) == v for k, v in TRAINING_FREE[family].items())
