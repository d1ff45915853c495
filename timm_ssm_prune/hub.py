"""Hugging Face Hub support: timm-format ``config.json`` and model cards for this package's models.

One place builds what a Hub folder holds, so that ``tools/make_hub_configs.py`` (the ``hub_configs/`` folders of
every registered model), ``timm-ssm-prune convert`` (a converted checkpoint) and ``timm-ssm-prune push`` (the
checks before an upload) agree:

* :func:`hub_config` -- the ``config.json`` dict exactly as timm's ``save_config_for_hf`` writes it
  (``architecture``, ``num_classes``, ``num_features``, ``global_pool``, ``model_args``, ``pretrained_cfg`` without
  its weight source, ``custom_load: false``), with the model's prune configuration added to ``model_args``
  (``prune_layers``, ``keep_rate``, ``importance``, ``alignment``; a ``flops_reduction`` target is replaced by
  the keep rates it was solved to), so that ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` and
  ``'local-dir:DIR'`` rebuild the same pruned model;
* :func:`render_model_card` -- ``README.md`` with Hugging Face front matter (``library_name: timm``, tags that do not
  claim transformers, licence, datasets, ``pipeline_tag``) and a body giving the pruning schedule, parameters,
  GFLOPs dense vs pruned (:func:`timm_ssm_prune.count_flops`), published accuracy with its source, where the
  weights come from, usage and citations;
* :func:`write_hub_folder` / :func:`generate_hub_configs` -- write (or check) the folders.

Everything here is deterministic (no dates, no absolute paths) so that the generated folders can be committed.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from .models.facts import FACTS, PUBLISHED_TOP

__all__ = ['hub_config', 'model_facts', 'render_model_card', 'write_hub_folder', 'generate_hub_configs',
           'package_models', 'parse_front_matter', 'config_json_text', 'PRUNE_KEYS', 'CARD_TAGS',
           'HUB_CONFIG_FILES']

# model_args that configure pruning: the first four always written for a pruned model, the others (the options
# beyond the paper, PruneConfig.OPTION_DEFAULTS) when they differ from their defaults
PRUNE_KEYS = ('prune_layers', 'keep_rate', 'importance', 'alignment', 'reduction', 'merge_fraction', 'merge_partner',
              'cls_position', 'importance_seed')
# Front-matter tags: timm's generate_readme defaults to [image-classification, timm, transformers]; these models
# need this package, not transformers.
CARD_TAGS = ('image-classification', 'timm', 'timm-ssm-prune', 'mamba', 'state-space-model')
HUB_CONFIG_FILES = ('config.json', 'README.md')
MODULES = ('plainmamba', 'vim')  # timm.list_models(module=...) of this package
# model_args that only say what the weights are for (set by timm for every model), not how the model is built
_INPUT_ARGS = ('in_chans', 'num_classes', 'global_pool', 'img_size')

TOP_PAPER = dict(
    name='Exploring Token Pruning in Vision State Space Models', arxiv='2409.18962', short='ToP',
    bibtex="""@inproceedings{zhan2024exploring,
  title     = {Exploring Token Pruning in Vision State Space Models},
  author    = {Zhan, Zheng and Kong, Zhenglun and Gong, Yifan and Wu, Yushu and Meng, Zichong and Zheng, Hangyu and
               Shen, Xuan and Ioannidis, Stratis and Niu, Wei and Zhao, Pu and Wang, Yanzhi},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2409.18962},
  archivePrefix = {arXiv}
}""")

FAMILIES = {
    'plainmamba': dict(
        title='PlainMamba', arxiv='2403.17695', origin='https://github.com/ChenhongyiYang/PlainMamba',
        tag='plainmamba',
        what='a non-hierarchical (isotropic) vision Mamba: a convolutional stem, then blocks of selective-scan '
             'mixers that scan the token grid in four zig-zag directions, mean pooling and a linear head',
        bibtex="""@inproceedings{yang2024plainmamba,
  title     = {PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition},
  author    = {Yang, Chenhongyi and Chen, Zehui and Espinosa, Miguel and Ericsson, Linus and Wang, Zhenyu and
               Liu, Jiaming and Crowley, Elliot J.},
  booktitle = {35th British Machine Vision Conference (BMVC)},
  year      = {2024},
  eprint    = {2403.17695},
  archivePrefix = {arXiv}
}"""),
    'vim': dict(
        title='Vision Mamba', arxiv='2401.09417', origin='https://github.com/hustvl/Vim',
        tag='vision-mamba',
        what='a plain vision Mamba: patch embedding with a class token in the middle of the sequence, blocks of '
             'bidirectional (forward + backward) selective-scan mixers, and a linear head on the class token',
        bibtex="""@inproceedings{zhu2024vim,
  title     = {Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model},
  author    = {Zhu, Lianghui and Liao, Bencheng and Zhang, Qian and Wang, Xinlong and Liu, Wenyu and Wang, Xinggang},
  booktitle = {Forty-first International Conference on Machine Learning (ICML)},
  year      = {2024},
  eprint    = {2401.09417},
  archivePrefix = {arXiv}
}"""),
}

# Per-model facts live in one table (models/facts.py); these views are what the cards read.
DISPLAY_NAMES = {name: f.display for name, f in FACTS.items()}
# Measured here: dense top-1 (%) of the shipped Animal-MNIST weights on the 2,000-image validation split.
MINI_TOP1 = {name: f.top1 for name, f in FACTS.items() if f.shipped}
# Published ImageNet-1k top-1 of the upstream dense checkpoints (their READMEs).
PUBLISHED_TOP1 = {name: f.top1 for name, f in FACTS.items() if not f.shipped}


# ------------------------------------------------------------------------------------------------ registry

def package_models() -> List[str]:
    """Every architecture this package registers with timm (sorted, as timm lists them)."""
    import timm
    from . import models  # noqa: F401  (registers)
    names: List[str] = []
    for module in MODULES:
        names += timm.list_models(module=module)
    return names


def family_of(model_or_arch) -> str:
    """'plainmamba' or 'vim' for a model of this package (by its class's module) or an architecture name."""
    if isinstance(model_or_arch, str):
        arch = model_or_arch.split('.')[0]
        for fam in MODULES:
            if arch.startswith(fam):
                return fam
        raise ValueError(f"{arch!r} is not a model of timm-ssm-prune")
    fam = type(model_or_arch).__module__.rsplit('.', 1)[-1]
    if fam not in FAMILIES:
        raise ValueError(f"{type(model_or_arch).__name__} is not a model of timm-ssm-prune")
    return fam


def dense_arch(arch: str) -> str:
    return arch[:-len('_pruned')] if arch.endswith('_pruned') else arch


# ------------------------------------------------------------------------------------------------ config.json

def _timm_hf_config(model: nn.Module) -> Dict[str, Any]:
    """timm's own ``save_config_for_hf`` output, read back (tuples become lists, as in the written file)."""
    from timm.models._hub import save_config_for_hf
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / 'config.json'
        save_config_for_hf(model, str(path))
        return json.loads(path.read_text())


def prune_model_args(model: nn.Module, architecture: str, model_args: Optional[Dict[str, Any]] = None) \
        -> Dict[str, Any]:
    """The prune kwargs to record for ``model`` (empty for a dense model of a dense architecture).

    A ``*_pruned`` architecture with pruning switched off records ``prune_layers=[]`` (its entrypoint would
    otherwise apply the default schedule); None values are never written (``timm.create_model`` drops them)."""
    cfg = getattr(model, 'prune_cfg', None)
    if cfg is None:
        return {}
    recorded = model_args or {}
    if not (cfg.enabled or architecture.endswith('_pruned') or any(k in recorded for k in PRUNE_KEYS)
            or 'flops_reduction' in recorded):
        return {}
    kw = cfg.to_kwargs()
    if not cfg.enabled:
        kw['prune_layers'] = []
    return {k: kw[k] for k in PRUNE_KEYS if kw.get(k) is not None}


def hub_config(model: nn.Module) -> Dict[str, Any]:
    """The ``config.json`` of ``model`` in timm's hub format, with its prune configuration in ``model_args``.

    ``model`` must come from ``timm.create_model`` (it reads ``model.pretrained_cfg`` and the factory's recorded
    kwargs); a model on the meta device is fine."""
    cfg = _timm_hf_config(model)
    args = dict(cfg.get('model_args') or {})
    prune = prune_model_args(model, cfg['architecture'], args)
    args.pop('flops_reduction', None)  # solved into keep_rate below; both together are an error
    for k in PRUNE_KEYS:
        args.pop(k, None)
    args.update(prune)
    out = {}
    for key in ('architecture', 'num_classes', 'num_features', 'global_pool'):
        if key in cfg:
            out[key] = cfg.pop(key)
    cfg.pop('model_args', None)
    out['model_args'] = args
    pretrained_cfg = cfg.pop('pretrained_cfg')
    out.update(cfg)  # label_names etc., if any
    out['pretrained_cfg'] = pretrained_cfg
    return out


def config_json_text(config: Dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + '\n'


def create_from_config(config: Dict[str, Any], **overrides) -> nn.Module:
    """Build the (untrained) model a ``config.json`` describes: ``architecture`` with ``model_args`` (whose
    ``num_classes`` is the top-level one, as timm's hub loader does)."""
    import timm
    kwargs = dict(config.get('model_args') or {})
    if 'num_classes' in config:
        kwargs['num_classes'] = config['num_classes']
    kwargs.update(overrides)
    return timm.create_model(config['architecture'], pretrained=False, **kwargs)


# ------------------------------------------------------------------------------------------------ facts

def _input_size(model: nn.Module) -> Tuple[int, int, int]:
    return (int(model.in_chans), *(int(s) for s in model.img_size))


def model_facts(model: nn.Module) -> Dict[str, Any]:
    """Numbers for the card: params, token counts, GFLOPs (dense and as configured) at the model's input size."""
    from .flops import count_flops
    input_size = _input_size(model)
    convention = getattr(model, 'default_flops_convention', 'mamba')
    cfg = model.prune_cfg
    facts = dict(
        params=sum(p.numel() for p in model.parameters()),
        input_size=input_size,
        convention=convention,
        token_counts=list(model.token_counts()),
        prune_cfg=cfg,
        depth=len(model.layers),
        embed_dim=int(model.embed_dim),
    )
    with model.pruning_disabled():
        facts['gflops_dense'] = count_flops(model, input_size)
        if convention != 'mamba':
            facts['gflops_dense_all'] = count_flops(model, input_size, convention='mamba')
    facts['gflops'] = count_flops(model, input_size) if cfg.enabled else facts['gflops_dense']
    if cfg.enabled and convention != 'mamba':
        facts['gflops_all'] = count_flops(model, input_size, convention='mamba')
    return facts


# ------------------------------------------------------------------------------------------------ card

def weights_source(pretrained_cfg: Dict[str, Any]) -> str:
    """Markdown: where ``pretrained=True`` takes the weights from (hub id + file, or the packaged file)."""
    hub_id, fname = pretrained_cfg.get('hf_hub_id'), pretrained_cfg.get('hf_hub_filename')
    if hub_id:
        fname = fname or 'model.safetensors'
        return (f"file `{fname}` of the Hugging Face repo [`{hub_id}`](https://huggingface.co/{hub_id}) "
                f"(https://huggingface.co/{hub_id}/blob/main/{fname})")
    if pretrained_cfg.get('file'):
        from .models._base import WEIGHTS_DIR
        path = Path(pretrained_cfg['file'])
        shown = f"timm_ssm_prune/weights/{path.name}" if path.parent == WEIGHTS_DIR else path.name
        return f"the file `{shown}` shipped inside the `timm-ssm-prune` package"
    if pretrained_cfg.get('url'):
        return f"<{pretrained_cfg['url']}>"
    return 'no weights (architecture only)'


def _vim_entry_note(tag: str) -> str:
    if tag.endswith('ema'):
        return " (its `model_ema` entry: the `.in1k_ema` tag)"
    return (" (its `model` entry, which Vim's `main.py --eval --resume` evaluates; the `.in1k_ema` tag takes "
            "`model_ema`)")


def counts_str(model: nn.Module) -> str:
    grid = getattr(model, 'grid_size', None)
    return f"{grid[0]}x{grid[1]}" if grid is not None else str(model.num_prunable_tokens)


def _fmt_g(x: float) -> str:
    return f"{x:.2f}"


def _fmt_rates(rates: Sequence[float]) -> str:
    rates = list(rates)
    if len(set(rates)) == 1:
        return f"{rates[0]:.4g} per stage"
    return ', '.join(f"{r:.4g}" for r in rates)


def _yaml_list(key: str, items: Iterable[str]) -> List[str]:
    return [f"{key}:"] + [f"- {i}" for i in items]


def front_matter(license_id: str, datasets: Sequence[str], tags: Sequence[str]) -> str:
    lines = ['---', 'library_name: timm', f'license: {license_id}']
    lines += _yaml_list('tags', tags)
    lines += _yaml_list('datasets', datasets)
    lines += ['pipeline_tag: image-classification', '---']
    return '\n'.join(lines) + '\n'


def parse_front_matter(text: str) -> Optional[Dict[str, Any]]:
    """The YAML front matter of a model card as a dict, or None when the card has none.

    Uses PyYAML when installed, else a small parser for ``key: value`` and ``key:`` + ``- item`` lists."""
    if not text.startswith('---'):
        return None
    lines = text.splitlines()
    if lines[0].strip() != '---':
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == '---')
    except StopIteration:
        return None
    body = '\n'.join(lines[1:end])
    try:
        import yaml
        data = yaml.safe_load(body) if body.strip() else {}
        return data if isinstance(data, dict) else None
    except ImportError:
        pass
    except Exception:  # invalid YAML
        return None
    data: Dict[str, Any] = {}
    key = None
    for line in lines[1:end]:
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        if line.lstrip().startswith('- ') and key is not None:
            if not isinstance(data.get(key), list):
                data[key] = []
            data[key].append(line.strip()[2:].strip().strip('\'"'))
        elif ':' in line and not line.startswith(' '):
            key, _, value = line.partition(':')
            key, value = key.strip(), value.strip()
            data[key] = value.strip('\'"') if value else None
        else:
            return None
    return data


def _nondefault_args(arch: str, model_args: Dict[str, Any]) -> Dict[str, Any]:
    """model_args that change the architecture (or its input) from the registered default; prune kwargs aside."""
    import timm
    ref = hub_config(timm.create_model(arch, device='meta'))['model_args']
    out = {}
    for k, v in model_args.items():
        if k in PRUNE_KEYS or k in ('scan_backend',):
            continue
        if k not in ref or ref[k] != v:
            out[k] = v
    return out


_OPTION_WORDS = {
    ('importance', 'cls'): "tokens are scored by how much they contribute to the class token's output through the "
                           "scan (not on the paper's clipped SSM-output sum)",
    ('importance', 'delta'): "tokens are scored by the scan's timescale softplus(Δ)",
    ('importance', 'l1'): "tokens are scored by the l1 norm of the block's SSM output",
    ('cls_position', 'raster'): "the class token goes back to its original place in the sequence (not the middle)",
    ('reduction', 'merge'): "the tokens not kept are merged into a kept token instead of being dropped",
    ('reduction', 'hybrid'): "part of the tokens not kept are merged into a kept token, the rest dropped",
    ('alignment', 'packed'): "kept tokens are packed on a condensed grid in their original order",
}


def _options_sentence(pc, family: str) -> str:
    """The card's words for a configuration that goes beyond the paper's method (empty for ToP itself)."""
    options = dict(pc.changed_options())
    if pc.importance != 'clip':
        options['importance'] = pc.importance
    if pc.alignment not in ('aligned',):
        options['alignment'] = pc.alignment
    words = [_OPTION_WORDS.get((k, v), f"{k}={v}") for k, v in options.items()]
    if not words:
        return ''
    from .models.facts import TRAINING_FREE
    kwargs = ', '.join(f"{k}={v!r}" for k, v in options.items())
    text = f" Beyond the paper, this configuration ({kwargs}): " + '; '.join(words) + "."
    if options == TRAINING_FREE.get(family):
        text += (" It is the package's training-free default for this family, chosen on a selection set from the "
                 "training split of the project's small models (benchmarks/RESULTS.md, \"Leaderboard\").")
    return text + (" The paper's method is `importance='clip'`, `alignment='aligned'`, `reduction='prune'`"
                   + (", `cls_position='middle'`." if family == 'vim' else "."))


def _dense_options_text(family: str) -> str:
    """How a dense card's reader switches pruning on: every kwarg and its values (from the pruning config, so the
    card cannot list fewer than the code accepts)."""
    from .models.facts import TRAINING_FREE
    from .pruning.config import ALIGNMENTS, CLS_POSITIONS, IMPORTANCE_METRICS, MERGE_PARTNERS, REDUCTIONS

    def one_of(values):
        return ', '.join(f"`{v}`" for v in values)

    metrics = IMPORTANCE_METRICS if family == 'vim' else tuple(m for m in IMPORTANCE_METRICS if m != 'cls')
    text = ("Pruning is configured with model kwargs: `prune_layers` (block counts after which to prune) with "
            "`keep_rate` (one rate, or one per stage) or `flops_reduction` (e.g. 0.4: a keep rate solved for a -40 % "
            f"FLOPs cut); `reduction` ({one_of(REDUCTIONS)}), `importance` ({one_of(metrics)}), `alignment` "
            f"({one_of(ALIGNMENTS)}), `merge_partner` ({one_of(MERGE_PARTNERS)}), `merge_fraction` (`hybrid`: the "
            "share of the other tokens merged, the rest dropped), `importance_seed` (`random`: a seed)")
    if family == 'vim':
        text += f", `cls_position` ({one_of(CLS_POSITIONS)})"
    default = ', '.join(f"{k}={v!r}" for k, v in TRAINING_FREE[family].items())
    return (text + f". The paper's method (ToP) is the default of each kwarg; the `*_pruned` names of this family "
            f"add `{default}`.")


def render_model_card(model: nn.Module, config: Optional[Dict[str, Any]] = None, *,
                      weights: Optional[str] = None, repo_id: Optional[str] = None,
                      converted_from: Optional[str] = None, known_weights: bool = True) -> str:
    """The ``README.md`` model card of ``model`` (built by ``timm.create_model``).

    Args:
        config: its ``config.json`` dict (default: :func:`hub_config`).
        weights: Markdown saying where the weights come from (default: the registry's pretrained cfg source).
        repo_id: Hub repo the folder is (or will be) published as, for the usage snippet.
        converted_from: for a converted folder, a line about the upstream file it was converted from.
        known_weights: False for weights that are not a known release (``convert`` of a file whose sha256 matches
            none): the card then makes no dataset, training or accuracy claim ("user-supplied weights").
    """
    config = config or hub_config(model)
    arch = config['architecture']
    fam_key = family_of(model)
    fam = FAMILIES[fam_key]
    pcfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    facts = model_facts(model)
    pc = facts['prune_cfg']
    base = dense_arch(arch)
    display = DISPLAY_NAMES.get(base, base)
    tag = str(pcfg.get('tag') or '')
    mini = 'animal_mnist' in tag
    dataset_id = 'animal-mnist' if mini else 'imagenet-1k'
    dataset_name = 'Animal-MNIST (10 classes, 28x28 grey)' if mini else 'ImageNet-1k'
    if not known_weights:
        dataset_name = 'not stated (user-supplied weights)'
    license_id = str(pcfg.get('license') or 'apache-2.0')
    tags = list(CARD_TAGS) + [fam['tag']] + (['token-pruning'] if pc.enabled else [])
    nondefault = _nondefault_args(arch, config.get('model_args') or {})
    c, h, w = facts['input_size']
    top_url = f"https://arxiv.org/abs/{TOP_PAPER['arxiv']}"
    fam_url = f"https://arxiv.org/abs/{fam['arxiv']}"

    fm = front_matter(license_id, [dataset_id] if known_weights else [], tags)
    out: List[str] = [fm if known_weights else fm.replace('datasets:\n', '')]
    out.append(f"# Model card for {arch}\n")
    c, h, w = facts['input_size']
    intro = (f"{display}: {fam['title']} ([arXiv:{fam['arxiv']}]({fam_url})), {fam['what']}.")
    if mini:
        intro += (f" This small configuration is defined by timm-ssm-prune for {h}x{w} grey images "
                  f"({counts_str(model)} tokens)" + (" and trained on Animal-MNIST." if known_weights else "."))
    if pc.enabled:
        intro += (f" This variant adds token pruning as in *{TOP_PAPER['name']}* ({TOP_PAPER['short']}, "
                  f"[arXiv:{TOP_PAPER['arxiv']}]({top_url})): after the configured blocks the least important "
                  f"patch tokens (scored on the block's SSM output) are dropped and every later block runs only on "
                  f"the kept ones, which keep their positions in each scan (hidden-state alignment). Pruning adds no "
                  f"parameters" + (": the model runs the dense weights, training-free (no fine-tuning here)."
                                   if known_weights else "."))
        intro += _options_sentence(pc, fam_key)
    elif arch.endswith('_pruned'):
        intro += " Token pruning is switched off in this configuration (`prune_layers=[]`)."
    else:
        intro += (f" Dense model; token pruning ({TOP_PAPER['short']}, [arXiv:{TOP_PAPER['arxiv']}]({top_url})) "
                  f"can be switched on at creation time with the kwargs below.")
    out.append(intro + "\n")
    out.append("This is a [timm](https://github.com/huggingface/pytorch-image-models) model provided by the "
               "`timm-ssm-prune` package: `import timm_ssm_prune` registers the architecture with timm before "
               "`timm.create_model(...)`. It is not a `transformers` model.\n")

    # ---- details
    out.append("## Model Details\n")
    details = [
        "- **Model type:** image classification / feature backbone",
        f"- **Architecture:** `{arch}` ({display}; embed dim {facts['embed_dim']}, {facts['depth']} blocks)",
        f"- **Params (M):** {facts['params'] / 1e6:.2f}",
    ]
    if pc.enabled:
        red = 100.0 * (1.0 - facts['gflops'] / facts['gflops_dense'])
        details.append(f"- **GFLOPs ({h}x{w}):** {_fmt_g(facts['gflops_dense'])} dense -> "
                       f"{_fmt_g(facts['gflops'])} pruned ({-red:+.1f} %)")
    else:
        details.append(f"- **GFLOPs ({h}x{w}):** {_fmt_g(facts['gflops_dense'])}")
    details += [
        f"- **Image size:** {h} x {w}, {c} channel{'s' if c != 1 else ''}",
        f"- **Dataset:** {dataset_name}",
        f"- **Papers:** {fam['title']} [arXiv:{fam['arxiv']}]({fam_url}); {TOP_PAPER['name']} "
        f"[arXiv:{TOP_PAPER['arxiv']}]({top_url})",
        f"- **Original:** {fam['origin']}",
        f"- **Weights:** {weights or weights_source(pcfg)}" + (_vim_entry_note(tag) if fam_key == 'vim' and
                                                               pcfg.get('hf_hub_id') and not weights else ''),
        f"- **License:** {license_id}" + ((" (weights trained by timm-ssm-prune; Animal-MNIST data is MIT-licensed)"
                                           if mini else " (upstream weights' licence)") if known_weights else
                                          " (the code's licence; the weights' licence is their supplier's)"),
    ]
    if converted_from:
        details.append(f"- **Converted from:** {converted_from}")
    out.append('\n'.join(details) + "\n")

    # ---- pruning
    out.append("## Token pruning configuration\n")
    counts = facts['token_counts']
    cls_note = ' (patch tokens; the class token is never pruned)' if fam_key == 'vim' else ''
    if pc.enabled:
        stages = ', '.join(str(b) for b in pc.prune_layers)
        lines = [
            f"- **Stages:** {len(pc.stages)}, pruning after block{'s' if len(pc.stages) > 1 else ''} {stages} "
            f"(1-based: the block's SSM output scores "
            f"the tokens, the following blocks run on the kept ones)",
            f"- **Keep rate:** {_fmt_rates(pc.keep_rates)} (`ceil(rate * alive tokens)`)",
            f"- **Importance:** `{pc.importance}`; **alignment:** `{pc.alignment}`",
            f"- **Tokens per stage:** {' -> '.join(str(n) for n in counts)}{cls_note}",
        ]
        out.append('\n'.join(lines) + "\n")
        args = {k: config['model_args'][k] for k in PRUNE_KEYS if k in config['model_args']}
        out.append("These are recorded in `config.json` (`model_args`), so loading this folder through `hf-hub:` or "
                   "`local-dir:` rebuilds the same pruned model:\n")
        out.append("```json\n" + json.dumps(args) + "\n```\n")
    else:
        out.append(f"Dense: all {counts[0]} tokens{cls_note} run through all {facts['depth']} blocks. "
                   + _dense_options_text(fam_key) + "\n")
    conv_note = {
        'mamba': "convention `mamba`: every linear/conv multiply-accumulate plus 9·E·N·L + E·L per scan direction "
                 "(PlainMamba's `get_flops.py`)",
        'localmamba': "convention `localmamba`, the counter behind the published Vim figures: 5·E·N·L + 2·E·L per "
                      "scan direction, the backward branch's conv1d/x_proj/dt_proj not counted",
    }[facts['convention']]
    flops_text = (f"GFLOPs are multiply-accumulates / 1e9 of one {h}x{w} image from `timm_ssm_prune.count_flops` "
                  f"({conv_note}); a pruned model's later blocks count their shorter sequences.")
    if 'gflops_dense_all' in facts:
        flops_text += (f" All the work the model does (convention `mamba`): {_fmt_g(facts['gflops_dense_all'])} dense"
                       + (f", {_fmt_g(facts['gflops_all'])} pruned." if 'gflops_all' in facts else "."))
    out.append(flops_text + "\n")

    # ---- results
    out.append("## Results\n")
    rows = []
    if not known_weights:
        out.append("None stated: these are user-supplied weights (their sha256 matches no release known to "
                   "timm-ssm-prune), so no dataset or accuracy is claimed for them. Measure them with "
                   "`timm-ssm-prune validate --model local-dir:DIR --pretrained --data-dir ...`.\n")
        if nondefault:
            out.append(f"**Note:** this model was built with non-default arguments "
                       f"`{json.dumps(nondefault, sort_keys=True)}`.\n")
        nondefault = {}
    if base in PUBLISHED_TOP1:
        rows.append(f"| {display} dense (upstream weights) | {PUBLISHED_TOP1[base]} | {FACTS[base].top1_source} |")
    if arch in PUBLISHED_TOP:
        p = PUBLISHED_TOP[arch]
        rows.append(f"| {display} + ToP, fine-tuned 30 epochs ({p['schedule']}; {p['flops']}) | {p['top1']} | "
                    f"ToP paper, arXiv:{TOP_PAPER['arxiv']} |")
    if rows and known_weights:
        out.append("| model | ImageNet-1k top-1 (%) | source |\n|---|---|---|\n" + '\n'.join(rows) + "\n")
    if mini and known_weights:
        acc = MINI_TOP1.get(base)
        if not FACTS[base].trained:
            raise ValueError(f"models/facts.py: {base} ships weights but does not say how they were trained "
                             f"(ModelFacts.trained)")
        out.append(f"Trained from scratch by timm-ssm-prune {FACTS[base].trained}"
                   + (f": top-1 **{acc} %** on the 2,000-image validation split (dense)" if acc else '')
                   + ". Pruned accuracies, zero-shot and fine-tuned, are in the repository's "
                   "`benchmarks/RESULTS.md`.\n")
    if pc.enabled and not mini and known_weights:
        note = ("The pruned defaults of timm-ssm-prune are **training-free**: they run the dense upstream weights "
                "unchanged. Published ToP accuracies are after the paper's 30-epoch fine-tune of the pruned model "
                "and were **not reproduced here**; expect lower accuracy without that fine-tune.")
        if arch not in PUBLISHED_TOP:
            note += " The ToP paper reports no result for this model."
        out.append(note + "\n")
    elif not mini and rows and known_weights:
        out.append("Published figures of the upstream checkpoint; not re-measured by timm-ssm-prune.\n")
    if nondefault:
        out.append(f"**Note:** this model was built with non-default arguments "
                   f"`{json.dumps(nondefault, sort_keys=True)}`; the published figures above are for the standard "
                   f"architecture and weights and do not apply to it.\n")

    # ---- usage
    out.append("## Model Usage\n")
    if repo_id:
        name, comment = f"hf-hub:{repo_id}", "this repository (config.json + model.safetensors)"
    elif converted_from:
        name, comment = "local-dir:/path/to/this/folder", "this folder; after upload: 'hf-hub:ORG/NAME'"
    elif pcfg.get('hf_hub_id'):
        name, comment = arch, "upstream weights, through the timm registry"
    else:
        name, comment = arch, "weights shipped in the package"
    usage = [
        "```python",
        "import timm_ssm_prune  # registers PlainMamba / Vim with timm; needed before create_model",
        "import timm",
        "import torch",
        "from PIL import Image",
        "",
        f"model = timm.create_model('{name}', pretrained=True).eval()  # {comment}",
    ]
    if not repo_id and not converted_from and not pc.enabled:
        from .pruning import evenly_spaced_stages
        stages = tuple(evenly_spaced_stages(facts['depth'], 3))
        usage.append(f"# with token pruning: timm.create_model('{arch}', pretrained=True, prune_layers={stages}, "
                     f"keep_rate=0.8)")
        usage.append(f"#                  or timm.create_model('{arch}', pretrained=True, flops_reduction=0.3)")
    usage += [
        f"img = Image.open('image.jpg').convert('{'L' if c == 1 else 'RGB'}')",
        "data_config = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**data_config, is_training=False)",
        "",
        "with torch.no_grad():",
        "    logits = model(transform(img).unsqueeze(0))",
        "top5_prob, top5_class = logits.softmax(dim=-1).topk(5)",
        "```",
    ]
    out.append('\n'.join(usage) + "\n")
    if not repo_id:
        out.append("A folder with this `config.json` and native weights (`timm-ssm-prune convert --model "
                   f"{arch} --checkpoint FILE --out DIR`) loads with `timm.create_model('local-dir:DIR', "
                   "pretrained=True)`, and once uploaded (`timm-ssm-prune push --model-dir DIR --repo-id ORG/NAME`) "
                   "with `timm.create_model('hf-hub:ORG/NAME', pretrained=True)`, with the same prune "
                   "configuration.\n")

    # ---- citation
    out.append("## Citation\n")
    out.append("```bibtex\n" + fam['bibtex'] + "\n\n" + TOP_PAPER['bibtex'] + "\n```\n")
    return '\n'.join(out)


# ------------------------------------------------------------------------------------------------ folders

def hub_folder_texts(model: nn.Module, **card_kwargs) -> Dict[str, str]:
    """{'config.json': ..., 'README.md': ...} for ``model``."""
    config = hub_config(model)
    return {'config.json': config_json_text(config),
            'README.md': render_model_card(model, config, **card_kwargs)}


def write_hub_folder(model: nn.Module, out_dir, **card_kwargs) -> List[Path]:
    """Write ``config.json`` and ``README.md`` of ``model`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in hub_folder_texts(model, **card_kwargs).items():
        path = out_dir / name
        path.write_text(text, encoding='utf-8')
        paths.append(path)
    return paths


def generate_hub_configs(out_root, names: Optional[Sequence[str]] = None, check: bool = False,
                         log=print) -> List[str]:
    """Write (or with ``check=True`` compare) ``<out_root>/<model>/{config.json,README.md}`` for every registered
    model (or ``names``). Returns the problems found in check mode (missing/different files, stale folders)."""
    import timm
    out_root = Path(out_root)
    registered = package_models()
    names = list(names) if names else registered
    problems = []
    for name in names:
        if name not in registered:
            raise ValueError(f"{name!r} is not a model registered by timm-ssm-prune ({', '.join(registered)})")
        model = timm.create_model(name, device='meta')
        texts = hub_folder_texts(model)
        folder = out_root / name
        for fname, text in texts.items():
            path = folder / fname
            if check:
                if not path.is_file():
                    problems.append(f"{path}: missing")
                elif path.read_text(encoding='utf-8') != text:
                    problems.append(f"{path}: out of date")
            else:
                folder.mkdir(parents=True, exist_ok=True)
                if not path.is_file() or path.read_text(encoding='utf-8') != text:
                    path.write_text(text, encoding='utf-8')
                    log(f"wrote {path}")
    if out_root.is_dir() and names == registered:
        for d in sorted(p for p in out_root.iterdir() if p.is_dir()):
            if d.name not in registered:
                problems.append(f"{d}: no registered model of that name (stale folder)")
    return problems


# ------------------------------------------------------------------------------------------------ README table

README_TABLE_BEGIN = ('<!-- model table: generated by `python tools/make_hub_configs.py` from '
                      'timm_ssm_prune/models/facts.py -->')
README_TABLE_END = '<!-- end of model table -->'


def model_table_markdown() -> str:
    """The README's model table: one row per model of ``models/facts.py`` (with its ``*_pruned`` name when one
    is registered), parameters and GFLOPs from the package's own counters at the model's input size."""
    import timm
    from .flops import count_flops
    rows = ['| name | params | GFLOPs dense → pruned | default schedule of `*_pruned` '
            '| weights (`pretrained=True`) |',
            '|---|---|---|---|---|']
    for name, facts in FACTS.items():
        model = timm.create_model(name, device='meta')
        params = sum(p.numel() for p in model.parameters()) / 1e6
        params_text = f"{params:.2f} M" if params >= 1 else f"{params:.3f} M"
        dense = count_flops(model)
        names, flops, schedule = f"`{name}`", f"{dense:.2f}" if dense >= 0.1 else f"{dense:.3f}", '–'
        if facts.pruned:
            pruned = timm.create_model(f'{name}_pruned', device='meta')
            names += f", `{name}_pruned`"
            flops += f" → {count_flops(pruned):.2f}"
            layers = ', '.join(str(b) for b in facts.pruned['prune_layers'])
            schedule = f"after blocks {layers}, keep {facts.pruned['keep_rate']}"
            options = pruned.prune_cfg.changed_options()
            if pruned.prune_cfg.importance != 'clip':
                options = dict(importance=pruned.prune_cfg.importance, **options)
            if options:
                schedule += '; ' + ', '.join(f"{k}={v}" for k, v in options.items())
        elif facts.shipped:
            schedule = '– (use kwargs)'
        rows.append(f"| {names} | {params_text} | {flops} | {schedule} | {facts.weights} |")
    return '\n'.join([README_TABLE_BEGIN, *rows, README_TABLE_END])


def update_readme_table(readme, check: bool = False) -> bool:
    """Replace the model table between the README's markers with ``model_table_markdown()``; with ``check``, only
    compare. Returns True when the file's table differed."""
    path = Path(readme)
    text = path.read_text()
    if README_TABLE_BEGIN not in text or README_TABLE_END not in text:
        raise ValueError(f"{path} has no model-table markers ({README_TABLE_BEGIN!r} ... {README_TABLE_END!r})")
    start, end = text.index(README_TABLE_BEGIN), text.index(README_TABLE_END) + len(README_TABLE_END)
    table = model_table_markdown()
    if text[start:end] == table:
        return False
    if not check:
        path.write_text(text[:start] + table + text[end:])
    return True
