"""The ``specdec`` console script: one entry, one subcommand per offline tool.

Bad input is a one-line ``specdec: error: ...`` on stderr and exit code 2,
never a traceback (argparse does the same for bad flags).
"""

from __future__ import annotations

import argparse
import sys

from .errors import UsageError


def _add_tiny_model(sub) -> None:
    p = sub.add_parser("tiny-model", help="build (or reuse) the project's tiny Llama target/draft models",
                       description="Build or reuse the tiny Llama target (with --draft a smaller draft sharing "
                                   "its tokenizer, with --wide the benchmark target). Prints the folder of the "
                                   "last model asked for as the last line.")
    p.add_argument("--draft", action="store_true", help="also build the draft model; print its folder last")
    p.add_argument("--out", help="root folder for models (default: $SPECDEC_HOME/models, "
                                 "SPECDEC_HOME defaults to ~/.cache/specdec-engine)")
    p.add_argument("--wide", action="store_true",
                   help="also build the benchmark target (the trained target widened to 69M parameters, same "
                        "outputs, a forward that dominates vLLM's step); print its folder last")
    p.add_argument("--eagle3", action="store_true",
                   help="also build the tiny target's EAGLE-3 head (LlamaForCausalLMEagle3, loadable by vLLM as "
                        "{\"method\": \"eagle3\", \"model\": DIR}); print its folder last")
    p.add_argument("--eagle", action="store_true",
                   help="also build the tiny target's EAGLE-1 head (EagleLlamaForCausalLM, loadable by vLLM as "
                        "{\"method\": \"eagle\", \"model\": DIR}); print its folder last")
    p.add_argument("--force", action="store_true", help="rebuild even if a verified build exists")

    def run(args) -> int:
        from . import tiny_model

        return tiny_model.main(args)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="specdec-engine offline tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tiny_model(sub)
    from . import aa, cache_cli, corpus, tiles, workload_profile
    from . import decide

    tiles.add_parser(sub)
    aa.add_parser(sub)
    cache_cli.add_parser(sub)
    workload_profile.add_parser(sub)
    corpus.add_parser(sub)
    decide.add_parser(sub)
    from .loop import command as loop_cli

    loop_cli.add_parser(sub)
    from . import train
    train.add_parser(sub)
    from . import tune
    tune.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"specdec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
