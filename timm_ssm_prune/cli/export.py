"""`timm-ssm-prune export`: a model (dense or pruned) to ONNX with a dynamic batch, checked with onnxruntime.

    timm-ssm-prune export --model plainmamba_mini --pretrained --model-kwargs prune_layers="(2,4)" keep_rate=0.7 \
        -o plainmamba_mini_pruned.onnx

Goes through ``torch.onnx.export(..., dynamo=True)`` (``timm_ssm_prune.export.export_onnx``), then, unless
``--no-check``, runs the file with onnxruntime on random batches of two sizes and compares the logits with
PyTorch's (largest difference relative to the logit scale, must be <= ``--tol``).
"""
import json
import time

from .common import add_model_args, create_model_from_args
from .errors import CliError


def add_arguments(p):
    add_model_args(p)
    p.add_argument('-o', '--output', required=True, help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument('--static-batch', action='store_true', help='fix the batch size to --batch-size')
    p.add_argument('--batch-size', '-b', type=int, default=2, help='batch of the example input (default 2)')
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    p.add_argument('--tol', type=float, default=1e-4,
                   help='largest |onnxruntime - PyTorch| logit difference allowed, relative to the logit scale')
    p.add_argument('--json', action='store_true', help='print the result as JSON')


def run(args):
    from ..export import EXPORT_INSTALL_HINT, compare_onnx, example_input, export_onnx, ort_session, require_onnx
    try:
        require_onnx()
    except ImportError:
        raise CliError(EXPORT_INSTALL_HINT)
    if args.device != 'cpu':
        raise CliError("export runs on the CPU (--device cpu)")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    model = create_model_from_args(args).eval()
    t0 = time.perf_counter()
    try:
        export_onnx(model, args.output, example_input(model, args.batch_size), dynamic_batch=not args.static_batch,
                    opset_version=args.opset)
    except Exception as e:  # a failed export: one line, the cause's type and first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise CliError(f"ONNX export of {args.model} failed: {type(e).__name__}: {first}")
    out = dict(model=args.model, output=args.output, pruning=model.prune_cfg.describe(),
               dynamic_batch=not args.static_batch, export_s=round(time.perf_counter() - t0, 1))
    if not args.no_check:
        session = ort_session(args.output)
        sizes = (args.batch_size,) if args.static_batch else (1, args.batch_size + 1)
        xs = [example_input(model, b, seed=i + 1) for i, b in enumerate(sizes)]
        out['check'] = dict(batch_sizes=list(sizes), **compare_onnx(model, session, xs))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"wrote {args.output}  ({out['model']}, {out['pruning']}, "
              f"{'dynamic' if out['dynamic_batch'] else 'static'} batch, {out['export_s']} s)")
        if 'check' in out:
            c = out['check']
            print(f"onnxruntime vs PyTorch, batches {c['batch_sizes']}: max |diff| {c['max_abs_diff']:.2e}, "
                  f"{c['rel_diff']:.2e} of the logit scale {c['logit_scale']:.3g}")
    if 'check' in out and not out['check']['rel_diff'] <= args.tol:
        raise CliError(f"onnxruntime logits differ from PyTorch's by {out['check']['rel_diff']:.2e} of the logit "
                       f"scale (more than --tol {args.tol:g}); the file {args.output} was written")
    return 0
