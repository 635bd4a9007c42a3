"""A render session: a ComfyUI server (started by us, or a user's URL) plus how to make a model
file visible to it."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from quant.errors import QuantgateError

from ..comfy import temp_bases
from ..comfy.client import ComfyClient
from ..comfy.errors import ComfyError
from ..comfy.server import ComfyServer, check_comfy_root, prepare_embedded
from . import models


class RenderSession:
    def __init__(self, client: ComfyClient, server: ComfyServer | None = None, log=None, embedded: bool = False):
        self.client = client
        self.server = server
        self.embedded = embedded
        self.log = log or (lambda *_: None)
        self.stats = client.system_stats()
        self.version = str(self.stats.get("system", {}).get("comfyui_version", "unknown"))
        self._n = 0
        self._names: dict[str, str] = {}
        self._options: dict[tuple[str, str], list] = {}

    @property
    def owned(self) -> bool:
        return self.server is not None

    def options(self, node_class: str, input_name: str) -> list:
        key = (node_class, input_name)
        if key not in self._options:
            info = self.client.object_info(node_class).get(node_class) or {}
            inp = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
            spec = inp.get(input_name)
            opts = spec[0] if isinstance(spec, list) and spec and isinstance(spec[0], list) else []
            if isinstance(spec, list) and spec and spec[0] == "COMBO" and len(spec) > 1:
                opts = spec[1].get("options", []) if isinstance(spec[1], dict) else []
            # a server's answer: only file names (strings) count, whatever else it lists
            self._options[key] = [o for o in opts if isinstance(o, str)] if isinstance(opts, list) else []
        return self._options[key]

    def model(self, path, folder: str = "diffusion_models", node_class: str = "UNETLoader",
              input_name: str = "unet_name", name: str | None = None) -> str:
        """The name under which the server sees ``path`` (a symlink in our own server's models)."""
        path = Path(path)
        key = f"{folder}:{path.resolve()}"
        if key in self._names:
            return self._names[key]
        if self.server is not None:
            self._n += 1
            name = self.server.add_model(path, folder, name or f"qg{self._n:02d}-{path.name}")
        else:
            opts = self.options(node_class, input_name)
            name = next((o for o in opts if o == path.name or os.path.basename(str(o)) == path.name), None)
            if name is None:
                raise ComfyError(f"the server at {self.client.url} does not list {path.name} for "
                                 f"{node_class}.{input_name}; put the file in its models/{folder} folder "
                                 "(or let quantgate start a server: drop --comfy-url)", path)
        self._names[key] = name
        return name

    # latent channels of the VAE the workflow decodes with (16: WAN 2.1 / A14B; 48: WAN 2.2 TI2V 5B)
    vae_latent_channels = 16

    def vae(self) -> str:
        """The TAEHV the shipped template decodes with (the reference model's: analytic or random)."""
        if self.server is not None:
            # VAELoader lists a vae_approx file only if its name starts with lighttaew2_1 / lighttaew2_2 / taehv
            ch = self.vae_latent_channels
            return self.model(models.reference_vae(self.server.root, log=self.log, python=self.server.python,
                                                   latent_channels=ch), "vae_approx",
                              "VAELoader", "vae_name", name=models.vae_name(ch))
        opts = self.options("VAELoader", "vae_name")
        name = next((o for o in opts if str(o).startswith(("lighttaew2_1", "taehv"))), None)
        if name is None:
            raise ComfyError(f"the server at {self.client.url} has no lighttaew2_1/taehv VAE for the built-in "
                             "workflow; pass your own --workflow (API format) and --model-node")
        return name

    def check_nodes(self, workflow: dict) -> None:
        known = set(self.client.object_info().keys())
        missing = sorted({n["class_type"] for n in workflow.values()} - known)
        if missing:
            hint = (" (quantgate's nodes live in harness/custom_nodes/: copy them into the server's custom_nodes)"
                    if any(m.startswith("QG") for m in missing) else "")
            raise ComfyError(f"the ComfyUI server lacks node types: {', '.join(missing)}{hint}")


@contextlib.contextmanager
def open_session(comfy_url: str | None = None, comfy_root=None, *, work_dir=None, log=None,
                 cpu: bool | None = None, keep_log: Path | None = None, startup_timeout: float = 180.0,
                 comfy_python: str | None = None):
    """Yield a :class:`RenderSession`; a server we started is always stopped on the way out."""
    log = log or (lambda *_: None)
    if comfy_url and comfy_root:
        raise ComfyError("use either --comfy-url or --comfy-root, not both")
    if comfy_python and not comfy_root:
        raise ComfyError("--comfy-python goes with --comfy-root (the Python that runs that checkout)")
    if comfy_python and not (Path(comfy_python).is_file() and os.access(comfy_python, os.X_OK)):
        raise ComfyError(f"--comfy-python {comfy_python}: not an executable file")
    if comfy_url:
        client = ComfyClient(comfy_url)
        yield RenderSession(client, None, log)
        return
    temp_bases.remove_stale(log=log)     # bases of quantgate runs killed with SIGKILL
    root = check_comfy_root(comfy_root) if comfy_root else prepare_embedded(log=log)
    tmp = None
    if work_dir is None:
        tmp = temp_bases.make("comfy")
        work_dir = tmp
    srv = ComfyServer(root, work_dir, cpu=cpu, log=log, startup_timeout=startup_timeout, python=comfy_python)
    try:
        log(f"starting ComfyUI {srv.version} ({'embedded' if not comfy_root else root}) on 127.0.0.1 ...")
        srv.start()
        log(f"ComfyUI is up at {srv.url} after {srv.start_seconds:.1f} s (log: {srv.log_path})")
        yield RenderSession(srv.client(), srv, log, embedded=not comfy_root)
    finally:
        srv.stop()
        if keep_log is not None and srv.log_path.is_file():
            try:
                Path(keep_log).parent.mkdir(parents=True, exist_ok=True)
                from quant.outputs import atomic_file, check_output      # the one output path (issue 20)
                check_output(keep_log, [srv.log_path], overwrite=True, what="server log copy")
                with atomic_file(keep_log, buffering=-1) as f, open(srv.log_path, "rb") as r:
                    shutil.copyfileobj(r, f, 1 << 20)
            except (OSError, QuantgateError):
                pass
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
