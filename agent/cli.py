"""The ``agent`` command line: parse a config, call the function that does the work."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from agent.config import add_flags, load_yaml, resolve
from agent.optional import MissingDependency


def _add_common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields; flags given on the command line override it")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    from agent.collect import CollectConfig
    from agent.evaluate import EvalConfig
    from agent.pretrain import PretrainConfig

    parser = argparse.ArgumentParser(prog="agent", description="Offline-to-online reinforcement learning for robot arms.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="roll out a policy and write episodes to a store",
                       description="Roll out a scripted, random or trained policy and append its episodes to a store.")
    _add_common(p, json_flag=True)
    p.add_argument("--recipe", dest="config", metavar="FILE.yaml", help="a dataset recipe (datasets/*.yaml); the same as --config")
    add_flags(p, CollectConfig)

    p = sub.add_parser("pretrain", help="offline training on a store",
                       description="Train a policy offline on a store; writes config.yaml, checkpoints/, metrics.jsonl and TensorBoard events to --out.")
    _add_common(p, json_flag=True)
    add_flags(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest.pt")

    from agent.finetune.config import FinetuneConfig

    p = sub.add_parser("finetune", help="online fine-tuning (WSRL, RO2O, H2O, Cal-QL, RLPD, SAC)",
                       description="Fine-tune a pretrained policy (or train from scratch) by interacting with a simulator; "
                                   "online episodes go to a store with lineage; writes config.yaml, checkpoints/, "
                                   "metrics.jsonl and TensorBoard events to --out.")
    _add_common(p, json_flag=True)
    add_flags(p, FinetuneConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest.pt")

    p = sub.add_parser("report", help="learning curves (PNG) and a markdown table across fine-tuning runs",
                       description="Group runs by algorithm, aggregate seeds by interquartile mean with a bootstrap band, "
                                   "mark the offline start; writes curves.png, report.md and report.json.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="fine-tuning run directories")
    p.add_argument("--out", default="report", help="directory for curves.png, report.md, report.json (default: report)")
    p.add_argument("--title", default="", help="plot title (default: the env id)")
    p.add_argument("--per-env", action="store_true",
                   help="runs of several envs: write one report per env under --out/<env> (default: refuse to mix envs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    from agent.corrupt import CorruptConfig
    from agent.label import LabelConfig

    p = sub.add_parser("label", help="actions for action-free episodes, from an inverse dynamics model",
                       description="Train an inverse dynamics model on the episodes with actions, report its held-out error, "
                                   "and write a new store in which the action-free episodes have its actions.")
    _add_common(p, json_flag=True)
    add_flags(p, LabelConfig)

    p = sub.add_parser("corrupt", help="a copy of a store with a share of its transitions corrupted",
                       description="Corrupt observations, actions, rewards or next observations of a share of a store's "
                                   "transitions (random noise or adversarial to a trained critic) into a new store, with lineage.")
    _add_common(p, json_flag=True)
    add_flags(p, CorruptConfig)

    p = sub.add_parser("eval", help="evaluate a trained run (or a scripted/random policy) in the simulator",
                       description="Roll out a policy; prints mean and std of return, D4RL-style normalized score and success rate.")
    _add_common(p, json_flag=True)
    add_flags(p, EvalConfig)

    p = sub.add_parser("inspect", help="summarize a store", description="Episodes, steps, returns and success by source, keys, shapes and dtypes of a store.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quality", action="store_true",
                   help="also measure trajectory quality (TQ) and state-action coverage (SACo) per source and split")
    p.add_argument("--reference", default="", metavar="STORE", help="--quality: the store SACo is relative to (default: this one)")
    p.add_argument("--bins", type=int, default=8, help="--quality: intervals per projected (s, a) dimension for SACo (default: 8)")
    p.add_argument("--components", type=int, default=4,
                   help="--quality: principal directions of the reference's (s, a) SACo counts cells on (default: 4; 0: every dimension)")
    p.add_argument("--plot", default="", metavar="FILE.png", help="--quality: draw TQ against SACo per group")

    p = sub.add_parser("import", help="convert a dataset of another format into a new store",
                       description="Read a D4RL, robomimic, Minari (hdf5 or arrow), LeRobot (v2.1/v3, low-dim) or "
                                   "diffusion_policy zarr v2 dataset and write it as a new store with lineage.")
    p.add_argument("--from", dest="fmt", required=True, choices=["d4rl", "robomimic", "minari", "lerobot", "zarr_v2"],
                   help="the format of SRC")
    p.add_argument("src", metavar="SRC", help="the file or folder to read")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="the store to create; it must not exist (written beside it and moved into place when complete)")
    p.add_argument("--env", default=None, help="env id to record (default: what the dataset states)")
    p.add_argument("--quality", default="", help="quality tag for every imported episode (expert, medium, ...)")
    p.add_argument("--obs-keys", default=None,
                   help="comma-separated observation keys to concatenate, in order (default: the low-dimensional keys "
                        "whose names are not reward, flag, time, stage or index keys; skipped keys are listed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("export", help="write a store in another format",
                       description="Write the committed episodes of a store as a D4RL hdf5 file.")
    p.add_argument("--to", dest="fmt", required=True, choices=["d4rl"], help="the format to write")
    p.add_argument("store", metavar="STORE")
    p.add_argument("out", metavar="OUT", help="the file to write (an existing file is replaced; a directory is refused)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("fsck", help="check a store and trim what a killed writer left",
                       description="Take the writer lock, delete temporary files, trim rows past the commit record, "
                                   "verify every committed chunk and the episode bookkeeping.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--check", action="store_true", help="only report; change nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    from agent.augment import AugmentConfig

    p = sub.add_parser("augment", help="guided data augmentation: augment, guide, filter, write with lineage",
                       description="Augment segments of --data (reflect, rotate, translate, relabel goals; random "
                                   "baselines), keep those the --guide accepts and the --filter(s) pass, write them to "
                                   "a new store --out with lineage, and print accepted/rejected counts by reason.")
    _add_common(p, json_flag=True)
    add_flags(p, AugmentConfig)
    p.add_argument("--list", action="store_true", help="list the registered augmentations, guides and filters, then exit")

    p = sub.add_parser("robot", help="the ROS 2 bridge: serve the simulated arm",
                       description="Commands of the ROS 2 bridge (docs/ros2.md).")
    robot_sub = p.add_subparsers(dest="robot_command", required=True, metavar="ROBOT_COMMAND")
    # listed here for --help; main() hands its flags to robot.driver, imported only when it runs
    robot_sub.add_parser("sim-driver", help="serve the simulated arm over ROS 2 topics (ros2_control style); "
                                            "see agent robot sim-driver --help")

    p = sub.add_parser("demo", help="collect, pretrain and evaluate on the default task; print a table",
                       description="The quick-start job: collect random/medium/expert datasets, pretrain BC on each, evaluate, print normalized scores.")
    p.add_argument("--out", default="runs/demo", help="directory for the demo's stores and runs (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version (for tests)")
    return parser


def _print(obj, as_json: bool, table=None) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
    elif table is not None:
        print(table)
    else:
        for k, v in obj.items():
            print(f"{k:>22}: {v}")


def cmd_collect(args) -> int:
    from agent.collect import CollectConfig, collect

    cfg = resolve(CollectConfig, args, args.config)
    result = collect(cfg)
    _print(result, args.json)
    return 0


def _saved_config(args) -> dict | None:
    """With --resume: the run directory's saved config, which flags then override."""
    if not args.resume:
        return None
    out = getattr(args, "out", None) or (load_yaml(args.config).get("out") if args.config else None)
    if not out:
        raise ValueError("--resume needs --out (the run directory to continue).")
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        raise ValueError(f"cannot resume: {str(saved)!r} does not exist; {out!r} is not a run directory.")
    return load_yaml(saved)


def cmd_pretrain(args) -> int:
    from agent.pretrain import PretrainConfig, TrainingInterrupted, pretrain

    cfg = resolve(PretrainConfig, args, args.config, base=_saved_config(args))
    try:
        result = pretrain(cfg, resume=args.resume)
    except TrainingInterrupted as exc:
        print(f"agent pretrain: {exc}; resume with: agent pretrain --out {shlex.quote(str(exc.run_dir))} --resume",
              file=sys.stderr)
        return 130
    _print(result, args.json)
    return 0


def cmd_finetune(args) -> int:
    from agent.finetune import FinetuneConfig, finetune

    cfg = resolve(FinetuneConfig, args, args.config, base=_saved_config(args))
    result = finetune(cfg, resume=args.resume)
    _print(result, args.json)
    return 0


def cmd_report(args) -> int:
    from agent.finetune.report import report

    result = report(args.runs, args.out, title=args.title, per_env=args.per_env)
    _print({k: v for k, v in result.items() if k != "table"} if args.json else result, args.json,
           table=None if args.json else result["table"] + f"\ncurves: {result['png']}\ntable: {result['markdown']}")
    return 0


def cmd_eval(args) -> int:
    from agent.evaluate import EvalConfig, evaluate

    cfg = resolve(EvalConfig, args, args.config)
    if bool(cfg.run) == bool(cfg.policy):
        raise ValueError("eval needs exactly one of --run RUN or --policy {scripted,random}.")
    if cfg.run:
        from agent.checkpoint import load_checkpoint
        from agent.envs import is_registered
        from agent.policy import policy_maker

        ckpt = load_checkpoint(cfg.run)
        env_id = cfg.env or str(ckpt.get("env_id") or "")
        if not cfg.env and not (env_id and is_registered(env_id)):
            raise ValueError(f"run {cfg.run!r} was trained on data of env id {env_id!r}, which is not a registered "
                             f"environment; pass --env ID naming one with observations of size {ckpt.get('obs_dim')} "
                             f"and actions of size {ckpt.get('act_dim')}.")
        make_policy = policy_maker(cfg.run, env_id, cfg.deterministic)
        # the store's env arguments (an imported dataset's time limit, say) apply in the run's own env only
        env_kwargs = {} if cfg.env else dict(ckpt.get("env_kwargs") or {})
    else:
        if not cfg.env:
            raise ValueError("eval --policy needs --env.")
        env_id, env_kwargs = cfg.env, {}
        from sims.experts import RandomPolicy, make_expert

        if cfg.policy == "scripted":
            def make_policy(env):
                return make_expert(env_id, env)
        elif cfg.policy == "random":
            def make_policy(env):
                return RandomPolicy(int(np.prod(env.action_space.shape)), seed=cfg.seed)
        else:
            raise ValueError(f"--policy must be 'scripted' or 'random', got {cfg.policy!r}.")
    result = evaluate(env_id, make_policy, cfg.episodes, seed=cfg.seed, env_kwargs=env_kwargs, progress=True, video=cfg.video,
                      video_episodes=cfg.video_episodes)
    if cfg.run and Path(cfg.run).is_dir():
        (Path(cfg.run) / "eval.json").write_text(json.dumps(result, indent=2))
    shown = {k: v for k, v in result.items() if k != "returns"}
    _print(result if args.json else shown, args.json)
    return 0


def cmd_inspect(args) -> int:
    from agent.inspect import format_summary, summarize_store
    from agent.store import Store

    store = Store.open(args.store)
    summary = summarize_store(store)
    table = format_summary(summary)
    if args.plot and not args.quality:
        raise ValueError("--plot draws the quality measures; add --quality.")
    if args.quality:
        from agent.quality import format_quality, plot, store_quality

        if args.plot and not args.plot.endswith(".png"):
            raise ValueError(f"--plot must name a .png file, got {args.plot!r}.")
        summary["quality"] = store_quality(store, Store.open(args.reference) if args.reference else None, args.bins,
                                           args.components)
        table += "\n\n" + format_quality(summary["quality"])
        if args.plot:
            plot(summary["quality"], args.plot, f"{store.env_id}: {store.path}")
            table += f"\nwrote {args.plot}"
    _print(summary, args.json, table=table)
    return 0


def cmd_import(args) -> int:
    from agent.store.importers import import_dataset

    keys = [k.strip() for k in (args.obs_keys or "").split(",") if k.strip()]
    options = {"obs_keys": keys} if keys else {}
    result = import_dataset(args.fmt, args.src, args.out, quality=args.quality, env_id=args.env, **options)
    _print(result, args.json)
    for warning in result.get("warnings", []):
        print(f"agent import: warning: {warning}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from agent.store.importers import export_dataset

    _print(export_dataset(args.fmt, args.store, args.out), args.json)
    return 0


def cmd_fsck(args) -> int:
    from agent.store import fsck

    report = fsck(args.store, repair=not args.check)
    _print(report, args.json)
    return 0 if not report["problems"] else 1


def cmd_augment(args) -> int:
    from agent.augment import AugmentConfig, augment, list_registered

    if args.list:
        _print(list_registered(), True)
        return 0
    cfg = resolve(AugmentConfig, args, args.config)
    result = augment(cfg)
    if args.json:
        _print(result, True)
    else:
        _print({k: v for k, v in result.items() if k != "rejected_by_reason"}, False)
        for reason, count in result["rejected_by_reason"].items():
            print(f"{'rejected ' + reason:>40}: {count}")
    return 0


def cmd_corrupt(args) -> int:
    from agent.corrupt import CorruptConfig, corrupt

    _print(corrupt(resolve(CorruptConfig, args, args.config)), args.json)
    return 0


def cmd_label(args) -> int:
    from agent.label import LabelConfig, label

    _print(label(resolve(LabelConfig, args, args.config)), args.json)
    return 0


def cmd_demo(args) -> int:
    from agent.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


COMMANDS = {"collect": cmd_collect, "pretrain": cmd_pretrain, "finetune": cmd_finetune, "report": cmd_report, "eval": cmd_eval, "inspect": cmd_inspect, "demo": cmd_demo,
            "import": cmd_import, "export": cmd_export, "fsck": cmd_fsck, "augment": cmd_augment, "corrupt": cmd_corrupt, "label": cmd_label}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["robot", "sim-driver"]:  # the driver parses its own flags
        from robot.driver import main as driver_main

        return driver_main(argv[2:], prog="agent robot sim-driver")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, ConnectionError, MissingDependency) as exc:  # ConnectionError: an unreachable robot
        if os.environ.get("AGENT_DEBUG"):
            raise
        print(f"agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agent {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
