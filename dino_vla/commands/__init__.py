"""The `dino-vla` subcommands, one module each: `add_parser(subparsers)` declares its arguments and
`main(args)` unpacks them into the library's typed functions and prints. Leaves: nothing but dino_vla/cli.py
imports them. Each module imports only argparse-level code at the top, so `--help` starts fast."""
