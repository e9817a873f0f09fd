"""Every internal of prometheus_client the worker relies on, pinned.

``worker/exposition.py`` works on the multiprocess mode's files, which prometheus_client
keeps to itself: it reads and writes them with ``MmapedDict`` (module ``mmap_dict``, not
public), parses their names to fold the files of dead processes into one archive per type,
removes dead processes' ``live*`` gauges with ``mark_process_dead``, and hands the archives
to ``MultiProcessCollector.merge`` as if a process had written them. ``stack/reference.py``
reads a metric's buckets and label names from private attributes for the docs' tables. A
release may change any of these; the exposition tests would then fail somewhere
downstream, or a replica would silently lose its dead processes' counts. These tests fail
first, each naming the one thing that moved.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import shutil
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

VERSION = importlib.metadata.version("prometheus-client")


def changed(what: str, see: str = "worker/exposition.py") -> str:
    return f"prometheus_client {VERSION} changed {what}: see {see}"


def _mmaped_dict():
    try:
        from prometheus_client.mmap_dict import MmapedDict
    except ImportError:
        pytest.fail(changed("prometheus_client.mmap_dict.MmapedDict (gone)"))
    return MmapedDict


# --- MmapedDict: the files' reader and writer ------------------------------------------------


def test_mmaped_dict_methods_the_compaction_calls():
    mmaped_dict = _mmaped_dict()
    init = inspect.signature(mmaped_dict.__init__)
    assert list(init.parameters)[:2] == ["self", "filename"], changed(f"MmapedDict{init}")
    write = inspect.signature(mmaped_dict.write_value)
    assert list(write.parameters) == ["self", "key", "value", "timestamp"], changed(
        f"MmapedDict.write_value{write}"
    )
    read = inspect.getattr_static(mmaped_dict, "read_all_values_from_file", None)
    assert isinstance(read, staticmethod), changed(
        "MmapedDict.read_all_values_from_file (no longer a static method)"
    )
    assert list(inspect.signature(read).parameters) == ["filename"], changed(
        f"MmapedDict.read_all_values_from_file{inspect.signature(read)}"
    )
    assert callable(getattr(mmaped_dict, "close", None)), changed("MmapedDict.close (gone)")


def test_values_written_by_mmaped_dict_read_back_from_the_file(tmp_path):
    """The archive is written to a staging name, closed, then renamed over the old one."""
    mmaped_dict = _mmaped_dict()
    staging, archive = tmp_path / "counter_archive.db.new", tmp_path / "counter_archive.db"
    written = mmaped_dict(str(staging))
    written.write_value('["a", "a_total", {}, "help"]', 3.0, 0.0)
    written.write_value('["b", "b_total", {}, "help"]', 0.5, 0.0)
    written.close()
    os.replace(staging, archive)
    rows = list(mmaped_dict.read_all_values_from_file(str(archive)))
    assert all(len(row) == 4 for row in rows), changed(
        f"what read_all_values_from_file yields (not (key, value, timestamp, pos): {rows})"
    )
    assert {key: value for key, value, _, _ in rows} == {
        '["a", "a_total", {}, "help"]': 3.0,
        '["b", "b_total", {}, "help"]': 0.5,
    }, changed(f"the values MmapedDict writes and reads back: {rows}")


# --- the files a process writes, and how they are merged -------------------------------------

_CHILD = """
import os
from prometheus_client import Counter, Gauge, Histogram

Counter("pins_jobs", "jobs", ["queue"]).labels("fast").inc(3)
Histogram("pins_seconds", "seconds", buckets=(1.0, 20.0)).observe(17.0)
Gauge("pins_processing", "in flight", multiprocess_mode="livesum").inc()
Gauge("pins_slots", "slots", multiprocess_mode="livemax").set(8)
print(os.getpid())
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A metrics directory written by two processes; their pids."""
    path = tmp_path_factory.mktemp("pins-metrics")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
    children = [
        subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    assert all(c.returncode == 0 for c in children), [c.stderr for c in children]
    return path, [int(c.stdout) for c in children]


def _copy(two_processes, tmp_path):
    path, pids = two_processes
    shutil.copytree(path, tmp_path / "metrics")
    return tmp_path / "metrics", pids


def test_a_process_writes_one_file_per_type_named_by_its_pid(two_processes):
    path, pids = two_processes
    names = sorted(p.name for p in path.iterdir())
    expected = sorted(
        f"{prefix}_{pid}.db"
        for pid in pids
        for prefix in ("counter", "histogram", "gauge_livesum", "gauge_livemax")
    )
    assert names == expected, changed(
        "the multiprocess files' names (compact_dead_processes parses <type>_<pid>.db "
        f"and gauge_<mode>_<pid>.db from PROMETHEUS_MULTIPROC_DIR): {names}"
    )


def test_a_series_has_the_same_key_in_every_process_file(two_processes):
    """The pid is in the file's name, not in the key: compaction adds values by key."""
    path, pids = two_processes
    read = _mmaped_dict().read_all_values_from_file
    keys = [{key for key, *_ in read(str(path / f"counter_{pid}.db"))} for pid in pids]
    assert keys[0] == keys[1] and len(keys[0]) == 1, changed(
        f"the keys of one series in two processes' files: {keys}"
    )


def test_merge_reads_an_archive_as_a_file_of_its_type(two_processes, tmp_path):
    merge = inspect.getattr_static(multiprocess.MultiProcessCollector, "merge", None)
    assert isinstance(merge, staticmethod), changed("MultiProcessCollector.merge (gone)")
    params = list(inspect.signature(merge).parameters)
    assert params == ["files", "accumulate"], changed(f"MultiProcessCollector.merge{params}")

    path, pids = _copy(two_processes, tmp_path)
    files = []
    for typ in ("counter", "histogram"):
        shutil.copy(path / f"{typ}_{pids[0]}.db", path / f"{typ}_archive.db")
        files += [str(path / f"{typ}_archive.db"), str(path / f"{typ}_{pids[1]}.db")]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in multiprocess.MultiProcessCollector.merge(files, accumulate=True)
        for s in metric.samples
    }
    assert samples.get(("pins_jobs_total", (("queue", "fast"),))) == 6, changed(
        f"how merge reads counter_archive.db beside counter_<pid>.db: {samples}"
    )
    assert samples.get(("pins_seconds_bucket", (("le", "20.0"),))) == 2, changed(
        f"how merge reads histogram_archive.db beside histogram_<pid>.db: {samples}"
    )
    assert samples.get(("pins_seconds_count", ())) == 2, changed(
        "merge's count of a histogram (accumulate=True)"
    )


def test_mark_process_dead_removes_the_live_gauges_of_that_pid_only(two_processes, tmp_path):
    params = list(inspect.signature(multiprocess.mark_process_dead).parameters)
    assert params[:2] == ["pid", "path"], changed(f"mark_process_dead({', '.join(params)})")
    path, (dead, alive) = _copy(two_processes, tmp_path)
    multiprocess.mark_process_dead(dead, str(path))
    left = sorted(p.name for p in path.iterdir())
    assert left == sorted(
        [f"counter_{dead}.db", f"histogram_{dead}.db"]
        + [f"{p}_{alive}.db" for p in ("counter", "histogram", "gauge_livesum", "gauge_livemax")]
    ), changed(f"which files mark_process_dead removes: {left} left")


# --- the endpoint's encoder ---------------------------------------------------------------


def test_choose_encoder_answers_prometheus_text_and_openmetrics():
    registry = CollectorRegistry()
    Histogram("pins_seconds", "seconds", registry=registry).observe(1.0)
    encoder, content_type = choose_encoder("")
    assert content_type.startswith("text/plain; version=0.0.4"), changed(
        f"choose_encoder's default content type: {content_type}"
    )
    assert b"pins_seconds_count 1.0" in encoder(registry), changed("choose_encoder's encoder")
    encoder, content_type = choose_encoder("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text"), changed(
        f"choose_encoder's OpenMetrics content type: {content_type}"
    )
    assert encoder(registry).endswith(b"# EOF\n"), changed("choose_encoder's OpenMetrics encoder")


# --- what the docs' metric table reads ------------------------------------------------------


def test_a_metric_keeps_its_buckets_and_label_names_where_the_docs_read_them():
    metric = Histogram("pins_d", "d", ["queue"], buckets=(1.0, 20.0), registry=None)
    assert list(getattr(metric, "_upper_bounds", [])) == [1.0, 20.0, float("inf")], changed(
        "Histogram._upper_bounds", see="stack/reference.py"
    )
    assert tuple(getattr(metric, "_labelnames", ())) == ("queue",), changed(
        "MetricWrapperBase._labelnames", see="stack/reference.py"
    )
