"""The backbone presets on one GPU: tokens/s, MFU, peak memory and input wait under DeepSpeed ZeRO 2/3.

    python benchmarks/gpu_scale.py                          # the default plan below, in its order
    python benchmarks/gpu_scale.py --grid --presets 32m 300m 1b --seq-lens 256 512 1024 --zero 2 3 \\
        --ckpt off on --compile off on                      # every combination
    python benchmarks/gpu_scale.py --plan 1b:512:2:off:off --profile 1b:512:2:off:off   # one case, profiled
    python benchmarks/gpu_scale.py --device cpu --plan 100k:32:2:off:off --steps 2 --warmup 1   # CPU smoke run

Each case builds genrec's model (`GenRec`: item tower, event embedding, backbone, projected head, the sampled-softmax
objective of `--config`) on the device, wraps it in the trainer's own DeepSpeed engine
(`genrec.engine.make_engine`: bf16 on GPU, ZeRO stage as asked, fused torch AdamW, `train.compile`) and runs the
trainer's own step (`genrec.engine.train_step`) on full windows of synthetic events over a catalogue of `--items`
titles, `--tokens` target events per step, each case in a process of its own (DeepSpeed engines are not freed
in-process). It is the model path only, one process on one device: the data path (Ray Data) is measured
by benchmarks/ingest.py and the trainer's own `input_wait_share`. Here batches come from a pool prepared in pinned host
memory, so `input_wait` is the host-side time to take one and start its copy to the GPU.

Timed: `--steps` steps after `--warmup` untimed ones (the first of which also compiles); engine start, compile and
the first step are reported apart as the time to the first step, and the peak memory is counted from the end of the
warm-up. Reported per case: tokens/s (target events per second), model TFLOP/s and MFU (genrec.flops: 6N backbone +
attention + the decoding head, against the device's dense bf16 peak; the embeddings and item tower are not counted),
step time, peak GPU memory (torch's allocator) beside DeepSpeed's own ZeRO model-state estimate, time to the first
step and the loss of the first and last step (a finite, falling loss says the step is real). The results JSON (--out,
default benchmarks/results/gpu_scale-<time>.json: the harness's meta, the device and its bf16 peak and measured matmul
rate, the settings and the rows) is rewritten as each case ends, so a run cut short keeps what it measured; a case
that fails (out of memory, a compile error, --case-timeout-s) is a row with its error. `--profile` writes each
profiled case's kernel breakdown to profile-<case>.txt beside the JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, without installing genrec

from benchmarks._harness import RESULTS, parser, write  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.features import MAX_GENRES, MAX_TOKENS, YEAR_BUCKETS, FeatureVocab, ItemFeatures  # noqa: E402
from genrec.flops import mfu, peak_tflops  # noqa: E402
from genrec.model import GenRec, ModelSpec, backbone_params, resolve_shape  # noqa: E402
from genrec.build import model_flops_per_token, num_negatives, objective, optimizer_and_schedule  # noqa: E402
from genrec.engine import make_engine, skip_shm_comm_op, train_step  # noqa: E402

# The default plan, most telling first (a run cut short by its time limit keeps the head of the list):
# preset:seq_len:zero_stage:activation_checkpointing:compile. The headline (the 1B backbone as fast as it goes), its
# eager baseline, then one axis at a time (optimizer, dropout, length, ZeRO stage, checkpointing, size): sized for
# one short lease on one card, the side-by-side of BENCHMARKS.md on another card (its timing is in BENCHMARKS.md).
DEFAULT_PLAN = [
    "1b:512:2:off:on:model.dropout=0", "1b:512:2:off:off", "1b:512:2:off:off:adam=foreach",
    "1b:512:2:off:off:model.dropout=0", "1b:256:2:off:off", "1b:1024:2:off:off", "1b:512:3:off:off",
    "1b:512:3:off:on:model.dropout=0", "1b:512:2:on:off", "1b:1024:2:on:off", "300m:512:2:off:off",
    "300m:512:2:off:on:model.dropout=0", "300m:512:3:off:off", "32m:512:2:off:off", "32m:512:3:off:off",
]
GENRES = 24


def parse_case(text: str) -> dict:
    """PRESET:SEQ_LEN:ZERO:CKPT:COMPILE[:adam=foreach][:KEY=VALUE...] (config overrides for this case only)."""
    try:
        preset, seq, zero, ckpt, comp, *extra = text.split(":")
        if ckpt not in ("on", "off") or comp not in ("on", "off") or any("=" not in e for e in extra):
            raise ValueError
        resolve_shape(preset)
        adam = next((e.split("=", 1)[1] for e in extra if e.startswith("adam=")), "fused")
        if adam not in ("fused", "foreach"):
            raise ValueError
        return {"preset": preset, "seq_len": int(seq), "zero": int(zero), "ckpt": ckpt == "on",
                "compile": comp == "on", "adam": adam, "set": [e for e in extra if not e.startswith("adam=")],
                "text": text}
    except ValueError:
        raise SystemExit(f"--plan case {text!r}: expected PRESET:SEQ_LEN:ZERO:on|off:on|off[:adam=fused|foreach]"
                         "[:KEY=VALUE...], e.g. 1b:512:2:off:off or 1b:512:2:off:on:model.dropout=0")


def synthetic_catalogue(n: int, vocab: FeatureVocab, gen: torch.Generator) -> ItemFeatures:
    """Random genres (1-3 per title), year buckets and 8 hashed title tokens: the item tower does its real work."""
    genres = torch.randint(1, GENRES + 1, (n + 1, MAX_GENRES), generator=gen)
    genres[:, 3:] = 0
    tokens = torch.randint(1, vocab.text_buckets + 1, (n + 1, MAX_TOKENS), generator=gen)
    tokens[:, 8:] = 0
    year = torch.randint(1, YEAR_BUCKETS, (n + 1,), generator=gen)
    launch = torch.randint(0, 10**9, (n + 1,), generator=gen)
    genres[0], tokens[0], year[0] = 0, 0, 0
    return ItemFeatures(genres, year, tokens, None, launch)


def synthetic_batches(count: int, batch: int, seq_len: int, num_items: int, gen: torch.Generator,
                      pin: bool) -> list[dict]:
    """Full windows of seq_len + 1 events (no padding): every position is a target, so tokens = batch x seq_len."""
    out = []
    for _ in range(count):
        gaps_s = torch.randint(60, 7 * 86400, (batch, seq_len + 1), generator=gen)
        b = {"items": torch.randint(1, num_items + 1, (batch, seq_len + 1), generator=gen),
             "actions": torch.randint(0, 4, (batch, seq_len + 1), generator=gen),
             "gaps": torch.clamp(1 + torch.log2(1 + gaps_s.float()).long(), max=31),
             "utils": torch.rand(batch, seq_len + 1, generator=gen) * 5,
             "ts": 1_600_000_000 + torch.cumsum(gaps_s, 1)}
        out.append({k: v.pin_memory() if pin else v for k, v in b.items()})
    return out


def zero_estimate_gb(model: torch.nn.Module, stage: int) -> float:
    """DeepSpeed's own estimate of the model states (params, grads, optimizer) on one GPU, no offload, in GB."""
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    # deepspeed is imported only once setup() has set DS_ACCELERATOR (it picks its accelerator when imported), and
    # only on a GPU run: --help and table() need no deepspeed.
    if stage == 3:  # estimate_zero3_model_states_mem_needs(offload off), one GPU
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        _, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, 1, 1, cpu_offload=False,
                                                          cpu_offload_params=False, zero_init=False)
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
        _, gpu = estimate_zero2_model_states_mem_needs(total, 1, 1, cpu_offload=False)
    return gpu / 2**30


def run_case(case: dict, args, device: torch.device, peak: float | None) -> dict:
    layers, width, heads = resolve_shape(case["preset"])
    batch = max(1, args.tokens // case["seq_len"])
    cfg = load_config(args.config, [f"model.preset={case['preset']}", f"model.max_seq_len={case['seq_len']}",
                                    f"train.zero_stage={case['zero']}", f"train.batch_size={batch}",
                                    f"model.activation_checkpointing={str(case['ckpt']).lower()}",
                                    f"train.compile={str(case['compile']).lower()}",
                                    "tracking.wandb=disabled", *args.overrides, *case["set"]])
    # What genrec.defaults would choose for a 100k-title catalogue at these widths (no shards here to resolve from).
    if cfg.model.decoding == "auto":
        cfg.model.decoding = "sampled"
    if cfg.model.projection_ratio == "auto":
        cfg.model.projection_ratio = 8 if width >= 512 else 1
    vocab = FeatureVocab(genres=tuple(f"g{i}" for i in range(GENRES)), text_buckets=cfg.model.text_buckets)
    spec = ModelSpec(num_items=args.items, layers=layers, width=width, heads=heads, max_seq_len=case["seq_len"],
                     dropout=cfg.model.dropout, activation_checkpointing=case["ckpt"],
                     projection_ratio=cfg.model.projection_ratio, semantic=cfg.model.semantic,
                     features=vocab.to_dict(), title_age=cfg.model.title_age)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with device:  # built on the device: initialising 1B parameters on the host is slow
        model = GenRec(spec)
    model.objective = objective(cfg)
    model.set_catalogue(synthetic_catalogue(args.items, vocab, gen), None)
    estimate = zero_estimate_gb(model, case["zero"]) if device.type == "cuda" else None
    optimizer, _ = optimizer_and_schedule(cfg, model, 1, fused=device.type == "cuda" and case["adam"] == "fused")
    engine = make_engine(cfg, model, optimizer, None, device.type == "cuda")
    n_neg = num_negatives(cfg, args.items)
    trained = torch.arange(1, args.items + 1, device=device)
    mask_rate = 0.05 if cfg.model.id_mask_rate == "auto" else float(cfg.model.id_mask_rate)
    step_gen = torch.Generator(device=device).manual_seed(1)
    pool = synthetic_batches(4, batch, case["seq_len"], args.items, gen, pin=device.type == "cuda")
    flops_per_token = model_flops_per_token(cfg, spec, args.items, n_neg)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(i: int) -> tuple[float, float]:
        tw = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in pool[i % len(pool)].items()}
        wait = time.perf_counter() - tw
        loss, _, _ = train_step(engine, b, trained, n_neg, mask_rate, step_gen)
        return wait, loss.item()  # .item() waits for the step, as the trainer's loss.item() does

    engine.train()
    _, first_loss = step(0)
    sync()
    first_step_s = time.perf_counter() - t0
    for i in range(1, args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    waits, losses = [], []
    ts = time.perf_counter()
    for i in range(args.steps):
        w, loss = step(i)
        waits.append(w)
        losses.append(loss)
    sync()
    elapsed = time.perf_counter() - ts
    tokens = batch * case["seq_len"] * args.steps
    tflops = flops_per_token * tokens / elapsed / 1e12
    row = {**case, "batch": batch, "backbone_params": backbone_params(layers, width),
           "params_total": sum(p.numel() for p in model.parameters()) if case["zero"] < 3 else
           sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
           "tokens_per_s": tokens / elapsed, "step_ms": 1000 * elapsed / args.steps,
           "model_tflops_per_s": tflops, "mfu": mfu(tflops, peak, 1) if peak else None,
           "input_wait_share": sum(waits) / elapsed,
           "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
           "zero_estimate_gb": estimate, "first_step_s": first_step_s,
           "loss_first": first_loss, "loss_last": losses[-1], "flops_per_token": flops_per_token}
    if args.profile_dir:
        try:
            row["profile"] = profile(step, sync, args.profile_dir / f"profile-{case_name(case)}.txt")
        except Exception as exc:  # the measured row stands without its profile
            row["profile"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    del engine, model, optimizer, pool
    return row


def case_name(case: dict) -> str:
    extra = "".join(f"-{e.rsplit('.', 1)[-1].replace('=', '')}" for e in case["set"]) + ("-foreach" if case["adam"] == "foreach" else "")
    return (f"{case['preset']}-L{case['seq_len']}-z{case['zero']}-ckpt{'on' if case['ckpt'] else 'off'}"
            f"-compile{'on' if case['compile'] else 'off'}{extra}")


def profile(step, sync, path: Path) -> dict:
    """Three steps under torch.profiler: CUDA time by kernel family, and the top kernels, written to `path`."""
    # Imported here: only a --profile case loads the profiler.
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile

    sync()
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(3):
            step(i)
        sync()
    wall_us = (time.perf_counter() - t0) * 1e6
    # Attention first: cutlass-based attention kernels (fmha_cutlass*) would otherwise count as GEMMs.
    families = {"attention (flash/sdpa)": ("flash", "fmha", "attention", "sdpa"),
                "matmul (gemm)": ("gemm", "matmul", "cutlass", "sm90_xmma", "nvjet", "cublas"),
                "optimizer (adam, multi_tensor)": ("adam", "multi_tensor", "foreach"),
                "copies (memcpy, cat, index)": ("memcpy", "copy", "cat", "index", "gather", "scatter"),
                "normalisation, activation, dropout, other elementwise": ()}
    sums = {k: 0.0 for k in families}
    kernels = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0.0)
        # Kernels only: an operator (aten::mm) is also credited with its kernels' time and would count twice.
        if t <= 0 or e.device_type != DeviceType.CUDA:
            continue
        kernels.append((t, e.key, e.count))
        name = e.key.lower()
        fam = next((k for k, keys in families.items() if keys and any(s in name for s in keys)),
                   "normalisation, activation, dropout, other elementwise")
        sums[fam] += t
    busy = sum(sums.values())
    kernels.sort(reverse=True)
    lines = [f"3 steps, wall {wall_us / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms ({busy / wall_us:.0%})", ""]
    lines += [f"{k:<55} {v / 1e3:9.1f} ms  {v / max(busy, 1):6.1%}" for k, v in sums.items()]
    lines += ["", "top kernels by self GPU time:"]
    lines += [f"{t / 1e3:9.2f} ms  x{c:<5} {k[:110]}" for t, k, c in kernels[:40]]
    lines += ["", prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)]
    path.write_text("\n".join(lines))
    return {"wall_ms": wall_us / 1e3, "gpu_busy_share": busy / wall_us,
            **{f"share_{k.split(' ')[0]}": v / max(busy, 1) for k, v in sums.items()}}


def matmul_tflops(device: torch.device) -> float | None:
    """The device's bf16 matrix-product rate on random 8192^3 operands: the ceiling actually reachable here."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    rate = 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12
    del a, b
    torch.cuda.empty_cache()  # the cases run in child processes: leave them all but this process's CUDA context
    return rate


def setup(args, distributed: bool) -> tuple[torch.device, str, float | None]:
    """Device, its name and dense bf16 peak; a one-process torch.distributed world for DeepSpeed if asked."""
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if distributed:
        import deepspeed  # here, after DS_ACCELERATOR above: deepspeed picks its accelerator when first imported

        if device.type == "cpu":
            skip_shm_comm_op()  # before init_distributed, which would otherwise JIT-build it (genrec.train)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        name = platform.processor() or platform.machine()
    return device, name, peak_tflops(name) if device.type == "cuda" else None


def child(args) -> int:
    """One case in this process (--child): its row is appended to --rows (JSON lines) for the parent to read."""
    device, _, peak = setup(args, distributed=True)
    case = parse_case(args.plan[0])
    args.profile_dir = Path(args.out).parent if args.profile is not None else None
    try:
        row = run_case(case, args, device, peak)
    except Exception as exc:  # an out-of-memory or compile failure is a result too
        traceback.print_exc()
        row = {**case, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    row["name"] = case_name(case)
    with Path(args.rows).open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


def table(results: dict) -> str:
    """The Markdown table of a run's rows (a failed case: its error), and the device and settings under it."""
    def fmt(v, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    out = ["| case | batch | tokens/s | model TFLOP/s | MFU | step ms | peak GB | ZeRO model-state estimate GB | "
           "input wait | first step s | loss first -> last |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        case = r.get("text", r.get("name"))
        if "error" in r:
            error = " ".join(r["error"].split()).replace("|", "\\|")
            out.append(f"| {case} | failed: {error} |" + " |" * 9)
            continue
        out.append(f"| {case} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:,.1f} | "
                   f"{fmt(r['mfu'], '.1%')} | {r['step_ms']:,.1f} | {fmt(r['peak_mem_gb'], '.1f')} | "
                   f"{fmt(r['zero_estimate_gb'], '.1f')} | {r['input_wait_share']:.2%} | {r['first_step_s']:.1f} | "
                   f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    peak, matmul = results.get("peak_bf16_tflops"), results.get("matmul_bf16_tflops")
    ceiling = (f"MFU against {peak:,.0f} TFLOP/s dense bf16" if peak else "no MFU (no bf16 peak known for the device)")
    if matmul:
        ceiling += f", a bare 8192^3 bf16 matmul here: {matmul:,.0f} TFLOP/s"
    out.append(f"\n{results['device']}: {results['tokens_per_step']:,} target events per step, {results['items']:,} "
               f"titles, {results['warmup']} untimed + {results['steps']} timed steps, one process per case; {ceiling}")
    bad = [r.get("text", r.get("name")) for r in results["rows"]
           if "error" not in r and not math.isfinite(r["loss_last"])]
    notes = ([f"loss not finite: {', '.join(bad)}"] if bad else []) + (
        [f"not run (--deadline-s): {', '.join(results['not_run'])}"] if results.get("not_run") else [])
    if notes:
        out.append("; ".join(notes))
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/local.yaml", help="objective, dropout, head: as users train")
    p.add_argument("--plan", nargs="+", help="cases PRESET:SEQ_LEN:ZERO:CKPT:COMPILE, run in this order")
    p.add_argument("--grid", action="store_true", help="every combination of the lists below instead of a plan")
    p.add_argument("--presets", nargs="+", default=["32m", "300m", "1b"])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--zero", nargs="+", type=int, default=[2, 3])
    p.add_argument("--ckpt", nargs="+", default=["off", "on"])
    p.add_argument("--compile", nargs="+", default=["off", "on"])
    p.add_argument("--tokens", type=int, default=32768, help="target events per step (batch = tokens / seq_len)")
    p.add_argument("--items", type=int, default=100_000, help="catalogue size (id embeddings, 1%% negatives)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one also compiles)")
    p.add_argument("--deadline-s", type=float, default=None, help="start no case after this many seconds")
    p.add_argument("--case-timeout-s", type=float, default=300, help="kill a case that runs longer than this")
    p.add_argument("--profile", nargs="*", help="cases (as in --plan) to profile for 3 more steps")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", default=None, help=argparse.SUPPRESS)  # a child's row goes here (JSON lines)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    args = p.parse_args(argv)

    if args.grid:
        cases = [parse_case(f"{pr}:{L}:{z}:{c}:{k}")
                 for pr, L, z, c, k in itertools.product(args.presets, args.seq_lens, args.zero, args.ckpt,
                                                         args.compile)]
    else:
        cases = [parse_case(c) for c in (args.plan or DEFAULT_PLAN)]
    if args.child:
        return child(args)
    # Each case in a fresh process: DeepSpeed engines are not freed in-process, and the next case's peak memory (and
    # whether it fits at all) would include the last one's.
    device, name, peak = setup(args, distributed=False)
    import deepspeed  # after setup(), which sets DS_ACCELERATOR: deepspeed picks its accelerator when first imported

    # One path for the whole run: the JSON is rewritten there as each case ends.
    out = Path(args.out) if args.out else RESULTS / f"gpu_scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    head = {"device": name, "peak_bf16_tflops": peak, "matmul_bf16_tflops": matmul_tflops(device),
            "torch": torch.__version__, "deepspeed": deepspeed.__version__, "tokens_per_step": args.tokens,
            "items": args.items, "steps": args.steps, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps(head), flush=True)
    rows, not_run = [], []
    results = {**head, "warmup": args.warmup, "config": args.config, "overrides": args.overrides,
               "plan": [c["text"] for c in cases], "profiled": args.profile or [], "deadline_s": args.deadline_s,
               "case_timeout_s": args.case_timeout_s, "rows": rows, "not_run": not_run}
    fd, rows_file = tempfile.mkstemp(prefix="gpu_scale-", suffix=".jsonl")  # the children's rows, handed back
    os.close(fd)
    rows_path = Path(rows_file)
    start = time.perf_counter()
    profiled = set(args.profile or [])
    try:
        for case in cases:
            if args.deadline_s is not None and time.perf_counter() - start > args.deadline_s:
                print(f"deadline: {case_name(case)} and later cases not run", flush=True)
                not_run.extend(c["text"] for c in cases[cases.index(case):])
                break
            print(f"[{time.perf_counter() - start:6.0f} s] {case_name(case)} ...", flush=True)
            cmd = [sys.executable, __file__, "--child", "--plan", case["text"], "--rows", str(rows_path),
                   "--out", str(out), "--config", args.config, "--tokens", str(args.tokens), "--items",
                   str(args.items), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                   *sum((["--set", o] for o in args.overrides), [])]
            if case["text"] in profiled:
                cmd.append("--profile")
            before = rows_path.read_text().count("\n")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout_s)
            except subprocess.TimeoutExpired as exc:
                proc = subprocess.CompletedProcess(cmd, -9, "", f"no result in {args.case_timeout_s} s: killed. "
                                                   f"{(exc.stderr or b'')[-300:]!r}")
            lines = rows_path.read_text().splitlines()[before:]
            row = json.loads(lines[-1]) if lines else {
                **case, "name": case_name(case), "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
            if "error" in row:
                print(proc.stderr[-3000:], flush=True)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            write("gpu_scale", results, str(out))
    finally:
        rows_path.unlink(missing_ok=True)
    write("gpu_scale", results, str(out))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
