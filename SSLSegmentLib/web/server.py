"""``sslsegment serve``: options, environment and start-up of the browser UI."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..catalogue import NETWORK_SIZES
from ..config import TrainConfig
from ..errors import InputError
from ..options import choices_of
from . import security

DEFAULT_HOST = "127.0.0.1"


@dataclass
class ServeOptions:
    images: Path | None = None
    labels: Path | None = None
    value_names: dict[int, str] | None = None
    host: str = DEFAULT_HOST
    port: int = 8080
    secret: str | None = None
    jobs_dir: Path | None = None
    max_volumes: int = 200
    max_upload_mb: int = 512
    method: str = TrainConfig.method
    iterations: int = TrainConfig.iterations
    device: str = TrainConfig.device
    dim: str = TrainConfig.dim
    size: str | None = None
    patch_size: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="folder of scans to open")
    p.add_argument("--labels", type=Path, help="folder of labels already made (same file names)")
    p.add_argument("--classes", help="names of the label values 1, 2, ... of labelmaps, e.g. RV,Myo,LV")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="0: any free port")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --host beyond loopback; every connection must then present the access secret")
    p.add_argument("--secret", help="access secret (default: random, printed once; env SSLSEGMENT_SECRET)")
    p.add_argument("--jobs-dir", type=Path, help="where training jobs and exports go")
    p.add_argument("--max-volumes", type=int, default=200)
    p.add_argument("--max-upload-mb", type=int, default=512)
    p.add_argument("--method", help=f"the Train panel's first method (default: {TrainConfig.method})")
    p.add_argument("--iterations", type=int,
                   help=f"the Train panel's first iterations (default: {TrainConfig.iterations})")
    p.add_argument("--device", default=TrainConfig.device, choices=choices_of(TrainConfig, "device"))
    p.add_argument("--dim", default=TrainConfig.dim, choices=choices_of(TrainConfig, "dim"))
    p.add_argument("--size", choices=NETWORK_SIZES, help="network size (default: the preset's)")
    p.add_argument("--patch-size", help="training patch z,y,x (default: the preset's)")


def options_from_args(args) -> ServeOptions:
    secret = security.access_secret(args.host, args.allow_remote, args.secret or os.environ.get("SSLSEGMENT_SECRET"))
    names = None
    if args.classes:
        names = {i: n.strip() for i, n in enumerate(args.classes.split(","), start=1) if n.strip()}
    return ServeOptions(images=args.images, labels=args.labels, value_names=names, host=args.host, port=args.port,
                        secret=secret, jobs_dir=args.jobs_dir, max_volumes=args.max_volumes,
                        max_upload_mb=args.max_upload_mb, method=args.method or TrainConfig.method,
                        iterations=args.iterations or TrainConfig.iterations,
                        device=args.device, dim=args.dim, size=args.size, patch_size=args.patch_size)


def prepare_environment(options: ServeOptions) -> None:
    """Offscreen rendering through EGL (no X server); a websocket that takes the bounded uploads."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    os.environ.setdefault("WSLINK_MAX_MSG_SIZE", str((options.max_upload_mb + 16) * 1024 * 1024))
    os.environ.setdefault("TRAME_DISABLE_V3_WARNING", "1")


def run_serve(args) -> int:
    """The CLI entry: 2 on bad options or data, 0 when the server stops."""
    options = options_from_args(args)  # bad options are named first, with or without the extra
    try:
        import trame_slicer  # noqa: F401, PLC0415
    except ImportError:
        raise InputError("the browser UI needs the web extra: pip install 'sslsegment[web]'") from None
    prepare_environment(options)
    for name in ("trame", "trame_server", "trame_client", "trame_vuetify", "trame_slicer", "trame_rca", "wslink"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from .app import WebApp  # noqa: PLC0415 (imports VTK rendering: after the environment is set)

    app = WebApp(options)
    app.load_initial_data()
    app.server.controller.on_server_ready.add(lambda **_: _announce(options, app.server.port))
    app.server.start(host=options.host, port=options.port, open_browser=False, show_connection_info=False)
    return 0


def _announce(options: ServeOptions, port: int) -> None:
    """Printed once: where to open the page (with the secret when one is needed)."""
    query = f"?{security.QUERY}={options.secret}" if options.secret else ""
    host = options.host if options.host not in ("0.0.0.0", "::") else "<this machine's address>"
    print(f"SSLSegment browser UI on http://{host}:{port}/{query}", flush=True)
    if options.secret:
        print("Every connection must present this secret; keep it private.", flush=True)
    sys.stdout.flush()
