"""``sqsam serve label-studio`` and ``sqsam demo`` (argparse; sqsam's main CLI calls
:func:`register_commands`). Also runnable alone: ``python -m sqsam_label_studio serve|demo``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from .lsproc import LS_INSTALL, LS_VENV

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
TEMPLATES = {"brush": "brush.xml", "polygon": "polygon.xml", "both": "brush_polygon.xml"}
INSTALL_HINT = (
    "Label Studio is not installed. It pins many packages, so it gets a virtual environment of its own, "
    "built from the constraints in sqsam's repository:\n"
    "  make install-label-studio      # or: " + LS_INSTALL + "\n"
    "sqsam demo then finds ./" + LS_VENV + "; elsewhere pass --label-studio-bin PATH "
    "(or export SQSAM_LABEL_STUDIO_BIN=PATH)."
)


def _subparsers_of(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register_commands(subparsers) -> None:
    """Add ``serve label-studio`` and ``demo`` to sqsam's top-level subparsers."""
    register_serve(subparsers)
    register_demo(subparsers)


def register_serve(subparsers) -> None:
    """Add ``serve label-studio`` (the ``sqsam.commands`` entry point ``serve``).

    The command sets ``func`` (``func(args) -> int`` exit code). An existing ``serve`` command
    (e.g. one that already holds ``serve cvat``) gets ``label-studio`` added to it.
    """
    serve = subparsers.choices.get("serve") if hasattr(subparsers, "choices") else None
    if serve is None:
        serve = subparsers.add_parser("serve", help="run an annotation-tool backend")
    serve_sub = _subparsers_of(serve) or serve.add_subparsers(dest="serve_target", metavar="TARGET", required=True)
    ls = serve_sub.add_parser(
        "label-studio", help="Label Studio ML backend (interactive clicks + pre-annotation)",
        description="Serve the Label Studio ML backend protocol (GET /health, POST /setup, /predict, /webhook). "
                    "Configure image access with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.")
    ls.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; "
                    "0.0.0.0 inside a container)")
    ls.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    ls.add_argument("--model", default=None, help="ONNX model file (default: the bundled model, or $SQSAM_MODEL)")
    ls.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    ls.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"),
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ls.set_defaults(func=serve_command)


def register_demo(subparsers) -> None:
    """Add ``demo`` (the ``sqsam.commands`` entry point ``demo``)."""
    demo = subparsers.add_parser(
        "demo", help="start a local Label Studio with sample images and the sqsam backend connected",
        description="Start Label Studio (from its pip package) on 127.0.0.1 with a project, a few images and "
                    "the sqsam backend connected in interactive mode; print the URL and login. Ctrl-C stops it.")
    demo.add_argument("images", nargs="*", help="image files or folders (default: sqsam's sample images)")
    demo.add_argument("--config", choices=sorted(TEMPLATES), default="brush",
                      help="labeling config: brush masks, polygons, or both (default brush)")
    demo.add_argument("--port", type=int, default=None, help="Label Studio port (default: a free one)")
    demo.add_argument("--backend-port", type=int, default=0, help="sqsam backend port (default: a free one)")
    demo.add_argument("--data-dir", default=None,
                      help="Label Studio data folder (default: a temporary one, deleted on exit)")
    demo.add_argument("--label-studio-bin", default=None,
                      help="the label-studio executable (default: $SQSAM_LABEL_STUDIO_BIN, then PATH)")
    demo.add_argument("--username", default="admin@example.com")
    demo.add_argument("--password", default="sqsam-demo")
    demo.add_argument("--max-images", type=int, default=20)
    demo.add_argument("--model", default=None, help="ONNX model file (default: the bundled model)")
    demo.add_argument("--exit-after-setup", action="store_true",
                      help="stop everything once the project is ready (for scripted checks)")
    demo.add_argument("--startup-timeout", type=float, default=300.0,
                      help="seconds to wait for Label Studio to start (first start migrates its database)")
    demo.set_defaults(func=demo_command)


def _load_model(path: str | None, threads: int | None = None):
    from sqsam_core import SqueezeSAM

    return SqueezeSAM(path, threads=threads) if (path or threads) else SqueezeSAM()


def serve_command(args) -> int:
    from werkzeug.serving import make_server

    from sqsam_core.errors import SqsamError

    from .app import create_app

    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = _load_model(args.model, args.threads)
    except SqsamError as exc:
        print(f"sqsam: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(model=model)
    except SqsamError as exc:  # settings it cannot start with, e.g. half a basic-auth pair
        print(f"sqsam: error: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        print(f"sqsam: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"sqsam Label Studio ML backend on http://{args.host}:{server.server_port} "
          f"(model {model.spec.model_version}); connect it in Label Studio: Settings > Model > Connect Model",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def sample_images() -> list[Path]:
    folder = resources.files("sqsam_label_studio").joinpath("samples")
    return sorted(Path(str(folder)).glob("*.jpg"))


def template(name: str) -> str:
    return resources.files("sqsam_label_studio").joinpath("templates", TEMPLATES.get(name, name)).read_text()


def collect_images(inputs: list[str], limit: int) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    return found[:limit]


def demo_command(args) -> int:
    from sqsam_core.errors import SqsamError

    from .app import create_app
    from .images import ImageLoader
    from .lsproc import BackgroundServer, LabelStudioError, LabelStudioServer, find_label_studio

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the demo's terminal
    executable = find_label_studio(args.label_studio_bin)
    if executable is None:
        print(f"sqsam demo: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        images = collect_images(args.images, args.max_images) if args.images else sample_images()
    except FileNotFoundError as exc:
        print(f"sqsam demo: {exc}", file=sys.stderr)
        return 2
    if not images:
        print("sqsam demo: no images found", file=sys.stderr)
        return 2
    try:
        model = _load_model(args.model)
    except SqsamError as exc:
        print(f"sqsam demo: {exc}", file=sys.stderr)
        return 2

    temp_dir = None if args.data_dir else tempfile.mkdtemp(prefix="sqsam-demo-")
    data_dir = Path(args.data_dir or temp_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "sqsam-demo-token"  # Label Studio sets a user's token only when it creates the user
    if not token_file.is_file():
        token_file.write_text("sqsam-demo-" + os.urandom(12).hex())
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    ls = LabelStudioServer(executable, data_dir, port=args.port, username=args.username,
                           password=args.password, token=token)
    backend = None
    try:
        print(f"Starting Label Studio ({executable}) on {ls.url}; the first start takes a minute ...", flush=True)
        ls.start(timeout=args.startup_timeout)
        client = ls.client()
        client.whoami()
        loader = ImageLoader(ls_url=ls.url, api_key=token)
        backend = BackgroundServer(create_app(model=model, loader=loader), port=args.backend_port).start()
        project = client.create_project(f"sqsam demo ({args.config})", template(args.config),
                                        description="Click an object with the smart keypoint tool "
                                                    "(Alt-click: negative point).")
        task_ids = client.import_images(project, images)
        ml = client.connect_ml(project, backend.url, title="sqsam", interactive=True)
        print()
        print(f"  Label Studio: {ls.url}/projects/{project}/data")
        print(f"  login:        {args.username} / {args.password}")
        print(f"  sqsam backend: {backend.url} (model {model.spec.model_version}, ML backend id {ml.get('id')})")
        print(f"  {len(task_ids)} task(s). Open a task, turn on 'Auto-Annotation' in the toolbar, pick the")
        print("  smart keypoint tool and click an object (Alt-click adds a negative point).")
        print()
        if args.exit_after_setup:
            return 0
        print("Press Ctrl-C to stop.", flush=True)
        while ls.process is not None and ls.process.poll() is None:
            time.sleep(1.0)
        print("Label Studio stopped.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except LabelStudioError as exc:
        print(f"sqsam demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqsam_label_studio")
    sub = parser.add_subparsers(dest="command", required=True)
    register_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
