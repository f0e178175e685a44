"""`mobileclip classify`, `index` and `search`: the torch-free runtime's commands; `serve`: a web bundle on loopback."""
from __future__ import annotations


def register(sub) -> None:
    """Add ``classify``, ``index`` and ``search`` (defined in :mod:`mobileclip.runtime.commands`) and ``serve``."""
    from ..runtime.commands import add_commands

    add_commands(sub)
    s = sub.add_parser("serve", help="serve a web bundle (export --format web) on 127.0.0.1 for a browser",
                       description="Serve a web bundle's folder on 127.0.0.1 with the headers multithreaded WASM needs "
                                   "(COOP/COEP); open the printed address in a browser. The bundle's files are checked "
                                   "against their sha256 first. Ctrl-C stops it.")
    s.add_argument("bundle", help="a bundle directory written by `mobileclip export --format web`")
    s.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (0: any free port; default 8000)")
    s.add_argument("--quiet", action="store_true", help="do not log each request")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..backends.web_browser import BundleServer

    server = BundleServer(args.bundle, port=args.port, verbose=not args.quiet)
    print(f"serving {args.bundle} at {server.url} (loopback only; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.close()
    return 0
