"""Many runs on Ray, the connection half: starting or joining Ray (``connect``), the
flags that place a command's runs (``add_ray_flags``), where an experiment's state lives
(``experiment_path``) and the resources of one trial (``trial_resources``). What one trial
is: ``fastcifar.engine.trials``.

Ray is the engine (docs.ray.io, "Ray Tune"): local by default, on any Ray cluster by
address. Ray is an extra (``pip install 'fastcifar[tune]'``): ``import_ray`` says so in
one line.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from fastcifar.errors import FastCifarError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOCAL_IP",
    "add_ray_flags",
    "connect",
    "experiment_path",
    "import_ray",
    "trial_resources",
]

# The local Ray's address: on the loopback range, never the machine's network address
# (Ray replaces 127.0.0.1 itself by the address it would route to: services.
# resolve_ip_for_localhost; any other 127.x.y.z it keeps).
LOCAL_IP = "127.0.0.2"
# The seconds an --address gets to answer before the command gives up on it.
CONNECT_TIMEOUT_S = 5.0


def add_ray_flags(parser, what: str) -> None:
    """The flags that place a command's runs on Ray, one definition for the sweep and the
    search: ``--max-failures``, ``--address``, ``--storage`` (``what``: "study" or
    "sweep", as the help names it).

    Args:
        parser: the command's argparse parser.
        what: ``"study"`` or ``"sweep"``.
    """
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        metavar="N",
        help="retries of a run whose worker died, each from its last checkpoint [2]",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="a Ray cluster to join: auto or HOST:PORT (default: a local Ray)",
    )
    parser.add_argument(
        "--storage",
        metavar="PATH",
        help=f"where Ray keeps the {what}'s state: a path every node sees (default the {what})",
    )


def experiment_path(out: Path, storage: str | None) -> Path:
    """Where Ray keeps a study's or sweep's experiment state: ``OUT/ray``, or with
    ``--storage PATH`` ``PATH/ray-OUTNAME`` (a path every node sees).

    Args:
        out: the study's or sweep's output folder.
        storage: the ``--storage`` path, or None.

    Returns:
        The experiment folder.
    """
    if storage is None:
        return Path(out) / "ray"
    return Path(storage).resolve() / f"ray-{Path(out).name}"


def import_ray(command: str):
    """``ray`` with ``ray.tune`` imported.

    Args:
        command: the command's name, for the message.

    Returns:
        The ``ray`` module.

    Raises:
        FastCifarError: Ray is not installed (the message gives the pip command).
    """
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError:
        raise FastCifarError(
            f"{command} runs on Ray, which is not installed: pip install 'fastcifar[tune]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """A TCP connection to ``HOST:PORT`` within ``CONNECT_TIMEOUT_S``, or one line."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FastCifarError(
            f"--address {address!r} is not HOST:PORT: pass the head node's address as "
            f"`ray start --head` printed it (such as 127.0.0.1:6379), or auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise FastCifarError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}): start "
            f"one with `ray start --head --port {port}`, or drop --address for a local Ray"
        ) from None


def _auto_address() -> str:
    """``--address auto``: ``RAY_ADDRESS``, else the cluster ``ray start`` last started on
    this machine (Ray's ``ray_current_cluster`` file in its temporary directory).

    Raises:
        FastCifarError: neither (Ray itself would search for minutes).
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip()
    raise FastCifarError(
        "--address auto: no Ray cluster was started on this machine (no RAY_ADDRESS, no "
        "`ray start`): start one with `ray start --head`, or drop --address for a local Ray"
    )


def connect(command: str, address: str | None, num_gpus: int | None = None):
    """Ray, started or joined: with no ``address`` a Ray of this process on this machine
    (on a loopback address, ``LOCAL_IP``; no dashboard; ``num_gpus`` GPUs, default every
    visible one);
    ``auto`` the cluster this machine belongs to (``RAY_ADDRESS`` or ``ray start``'s);
    ``HOST:PORT`` that cluster's head node. Worker output goes to the run directories'
    logs, not to this console. Returns the ``ray`` module.

    Args:
        command: the command's name, for messages.
        address: None, ``"auto"`` or ``"HOST:PORT"``.
        num_gpus: GPUs of a local Ray, or None for every visible one.

    Returns:
        The ``ray`` module, initialised.

    Raises:
        FastCifarError: Ray missing, or no cluster at ``address`` (refused within
            ``CONNECT_TIMEOUT_S`` seconds, not Ray's minutes of retries).
    """
    ray = import_ray(command)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose 0 is silent then
    # a snapshot per checkpoint is what a study of short epochs asks for: no warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": "error"}
    if address is None:
        ray.init(
            address="local",
            include_dashboard=False,
            num_gpus=num_gpus,
            _node_ip_address=LOCAL_IP,
            **quiet,
        )
        return ray
    if address == "auto":
        address = _auto_address()
    _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError) as exc:
        raise FastCifarError(
            f"--address {address}: could not join a Ray cluster ({str(exc).splitlines()[0]}): "
            f"start one with `ray start --head`, or drop --address for a local Ray"
        ) from None
    return ray


def trial_resources(ray, gpus_per_trial: float | None, cpus_per_trial: float) -> dict:
    """Ray's resources of one trial: ``gpus_per_trial`` GPUs (fractions share a GPU;
    default one where the cluster has GPUs, else none) and ``cpus_per_trial`` CPUs.

    Args:
        ray: the initialised ``ray`` module.
        gpus_per_trial: GPUs a trial (fractions share), or None for the default.
        cpus_per_trial: CPUs a trial.

    Returns:
        ``{"cpu": ..., "gpu": ...}`` for ``tune.with_resources``.

    Raises:
        FastCifarError: more GPUs or CPUs than the largest node has (Ray would wait for
            such a node for ever).
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = (1.0 if most_gpus else 0.0) if gpus_per_trial is None else gpus_per_trial
    if gpus > most_gpus:
        raise FastCifarError(
            f"--gpus-per-trial {gpus:g}: the largest node of the Ray cluster has "
            f"{most_gpus:g} GPU(s): pass at most that (0 for CPU trials)"
        )
    if cpus_per_trial > most_cpus:
        raise FastCifarError(
            f"{cpus_per_trial:g} CPUs a trial: the largest node of the Ray cluster has "
            f"{most_cpus:g}: pass at most that"
        )
    return {"cpu": cpus_per_trial, "gpu": gpus}
