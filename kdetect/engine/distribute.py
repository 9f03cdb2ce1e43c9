"""``tf.distribute`` for training: the strategy a recipe names, who the chief is, clear errors.

``train.distribute`` (recipe) picks one of:

* ``default`` / ``none``: TensorFlow's default strategy, one device.
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs; on a machine without GPUs,
  over all logical CPU devices (one, unless the process configured more, as the tests do).
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; the cluster comes from
  ``TF_CONFIG`` (see docs/distributed.md). Peers are health-checked every
  ``KDETECT_HEALTH_CHECK_INTERVAL`` seconds (default 30), and a collective waits at most
  ``KDETECT_COLLECTIVE_TIMEOUT`` seconds (default: no limit), so a lost worker makes the others
  fail with :class:`WorkerLostError` rather than hang.
* ``tpu``: ``tf.distribute.TPUStrategy`` on the TPU that ``TPUClusterResolver`` finds
  (``KDETECT_TPU`` names it; empty for a local TPU VM).

``data.batch_size`` is always the global batch: Keras splits each batch across the replicas, and
:meth:`FasterRCNN.train_step` divides the loss by the replica count so that the summed gradients
equal the single-device ones.
"""

from __future__ import annotations

import json
import os

from kdetect.plumbing.errors import KdetectError, RecipeError

STRATEGIES = ("default", "none", "mirrored", "multi_worker", "tpu")


class WorkerLostError(KdetectError):
    """A peer of a multi-worker job stopped answering."""


class DistributeError(KdetectError):
    """The devices a strategy needs are not there (no TPU, for example)."""


def tf_config() -> dict:
    """The parsed ``TF_CONFIG`` environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise RecipeError(f"TF_CONFIG is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise RecipeError("TF_CONFIG must be a JSON object with `cluster` and `task`")
    return config


def is_chief(strategy_name: str = "multi_worker", config: dict | None = None) -> bool:
    """Whether this process writes the run directory: always, except for the non-chief workers
    of a multi-worker job (the ``chief`` task, else ``worker`` 0, is the chief)."""
    if strategy_name != "multi_worker":
        return True
    config = tf_config() if config is None else config
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise RecipeError(f"{name}: expected a number of seconds, got {value!r}") from None


def build_strategy(name: str):
    """The ``tf.distribute.Strategy`` for ``train.distribute``."""
    import tensorflow as tf

    if name in ("default", "none"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
    if name == "multi_worker":
        config = tf_config()
        if not config.get("cluster"):
            raise RecipeError(
                "train.distribute: multi_worker needs TF_CONFIG with the cluster and this task "
                "(see docs/distributed.md)"
            )
        timeout = _env_float("KDETECT_COLLECTIVE_TIMEOUT")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        interval = _env_float("KDETECT_HEALTH_CHECK_INTERVAL")
        extended = strategy.extended
        if interval is not None and hasattr(extended, "_check_health_interval"):
            # Read by the health-check thread on each round; TF's default is 30 s.
            extended._check_health_interval = interval
        return strategy
    if name == "tpu":
        tpu = os.environ.get("KDETECT_TPU", "")
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            where = f"KDETECT_TPU={tpu!r}" if tpu else "this machine (KDETECT_TPU is unset)"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributeError(
                f"train.distribute: tpu: no TPU found for {where} ({first}); run on a TPU VM "
                "or set KDETECT_TPU to the TPU's name or grpc:// address"
            ) from exc
        return tf.distribute.TPUStrategy(resolver)
    raise RecipeError(
        f"train.distribute: unknown strategy {name!r}; one of {', '.join(STRATEGIES)}"
    )


def is_worker_loss(exc: BaseException) -> bool:
    """Whether ``exc`` is how TensorFlow reports a lost peer in a collective."""
    import tensorflow as tf

    return isinstance(
        exc,
        (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError),
    ) or "is down" in str(exc)
