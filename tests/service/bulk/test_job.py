"""`vit-serve embed` (service/bulk/job.py) as a user runs it, in a process of its own: every image
of a source embedded exactly as the server embeds it, a second run that finds everything done, a
run killed mid-way finished by the next without a row lost or repeated, bad files recorded in
their rows, and another model refused."""

from __future__ import annotations

import base64
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.bulk.output import MANIFEST
from tests.images import encode, gradient
from tests.service import bombs
from tests.service.servers import live_server, tiny_settings

DIGITS = Path(__file__).parents[3] / "examples" / "digits"
QUIET = ["--log-level", "warning", "--dtype", "float32"]  # float32: compared with the server's numbers


def embed(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}
    command = [sys.executable, "-m", "service", "embed", *map(str, args), *QUIET]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def table(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()  # every shard of the directory
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys))  # no row twice
    return {row["key"]: row for row in rows}


def test_a_directory_is_embedded_as_the_server_embeds_it_and_a_second_run_finds_it_done(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = embed(DIGITS, "--out", out, "--top-k", "2")
    assert "10 images embedded (0 with an error in their row)" in first.stderr
    rows = table(out)
    assert sorted(rows) == sorted(p.name for p in DIGITS.glob("*.png"))
    with live_server(tiny_settings(model="vit-mnist")) as (url, _):
        for name, row in rows.items():
            served = httpx.post(
                f"{url}/v1/classify?top_k=2",
                content=(DIGITS / name).read_bytes(),
                headers={"content-type": "image/png"},
            ).json()["results"][0]["predictions"]
            vector = httpx.post(
                f"{url}/v1/embeddings", json={"images": [base64.b64encode((DIGITS / name).read_bytes()).decode()]}
            ).json()["data"][0]["embedding"]
            assert np.allclose(row["embedding"], vector, atol=1e-5) and row["error"] is None
            assert row["labels"] == [p["label"] for p in served]
    second = embed(DIGITS, "--out", out, "--top-k", "2")
    assert "0 images embedded" in second.stderr and "10 were done before" in second.stderr


def test_bad_files_are_rows_with_their_error_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(encode(gradient(28, 28), "PNG"))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(encode(gradient(64, 64), "PNG")[:40])  # its header, no pixels
    (tmp_path / "bomb.bmp").write_bytes(bombs.rle8_bmp_of_blank_rows(320_000, 125))  # 40 MP in 1.6 KB
    listing = tmp_path / "list.txt"
    listing.write_text("good.png\nzero.png\ntext.png\ncut.png\nbomb.bmp\ngone.png\n")
    started = time.monotonic()
    done = embed(listing, "--out", tmp_path / "out")
    assert time.monotonic() - started < 60 and "6 images embedded (5 with an error in their row)" in done.stderr
    rows = table(tmp_path / "out")
    assert rows["good.png"]["error"] is None and len(rows["good.png"]["embedding"]) == 96
    errors = {key: row["error"] for key, row in rows.items() if key != "good.png"}
    assert errors["zero.png"] == "unreadable: empty file" and errors["gone.png"].startswith("unreadable:")
    assert errors["text.png"].startswith("not decoded:") and errors["cut.png"].startswith("not decoded:")
    assert "runs in Python" in errors["bomb.bmp"] and all(rows[k]["embedding"] is None for k in errors)


def test_a_killed_run_is_finished_by_the_next_without_a_row_lost_or_repeated(tmp_path: Path) -> None:
    source = tmp_path / "many"
    for copy in range(30):
        shutil.copytree(DIGITS, source / f"copy-{copy:02d}")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}
    command = [sys.executable, "-m", "service", "embed", str(source), "--out", str(out), "--shard-size", "20", *QUIET]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until a few shards are complete
            if (out / "part-00002.parquet").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert (out / MANIFEST).is_file()
    finished = embed(source, "--out", out, "--shard-size", "20")
    counts = re.findall(r"([\d,]+) (?:images embedded|were done before)", finished.stderr)
    now, before = (int(count.replace(",", "")) for count in counts)
    assert before >= 60 and now >= 1 and before + now == 300  # killed mid-way, with whole shards kept
    assert len(table(out)) == 300 and not list(out.glob(".*.partial"))


def test_another_model_into_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    embed(DIGITS, "--out", out)
    refused = embed(DIGITS, "--out", out, "--model", "vit_test_tiny", check=False)
    assert refused.returncode == 2 and "holds embeddings of another model or format" in refused.stderr
    assert "--overwrite" in refused.stderr and len(table(out)) == 10


def test_a_missing_source_is_one_line_and_exit_2(tmp_path: Path) -> None:
    refused = embed(tmp_path / "nowhere", "--out", tmp_path / "out", check=False)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.strip().endswith("no such directory or file, nor tar shards matching it")


def test_float16_embeddings_are_the_float32_ones_rounded(tmp_path: Path) -> None:
    embed(DIGITS, "--out", tmp_path / "f32")
    embed(DIGITS, "--out", tmp_path / "f16", "--float16")
    full, half = table(tmp_path / "f32"), table(tmp_path / "f16")
    for key, row in full.items():
        assert np.array_equal(np.float16(row["embedding"]), np.float16(half[key]["embedding"]))


def _disk_full_after(limit: int) -> None:
    """In the child: files may grow to `limit` bytes, past which a write fails (EFBIG), as on a
    full disk, instead of the process being killed (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_ends_the_run_in_one_line_and_a_new_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}
    command = [sys.executable, "-m", "service", "embed", str(DIGITS), "--out", str(out), "--shard-size", "4", *QUIET]
    full = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, preexec_fn=lambda: _disk_full_after(3000)
    )
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert (
        "writing shard 0 to" in full.stderr and "File too large" in full.stderr and "a new run resumes" in full.stderr
    )
    assert (out / MANIFEST).is_file() and not list(out.glob("part-*"))
    resumed = embed(DIGITS, "--out", out, "--shard-size", "4")
    assert "10 images embedded" in resumed.stderr and len(table(out)) == 10


def test_a_parquet_table_of_image_bytes_gives_the_directorys_embeddings(tmp_path: Path) -> None:
    names = sorted(p.name for p in DIGITS.glob("*.png"))
    data = [(DIGITS / name).read_bytes() for name in names]
    pq.write_table(pa.table({"key": names, "image": data}), tmp_path / "digits.parquet")
    embed(tmp_path / "digits.parquet", "--out", tmp_path / "from-table", "--shard-size", "3")
    embed(DIGITS, "--out", tmp_path / "from-directory")
    table_rows, directory_rows = table(tmp_path / "from-table"), table(tmp_path / "from-directory")
    assert sorted(table_rows) == names and len(list((tmp_path / "from-table").glob("part-*.parquet"))) == 4
    for name in names:
        assert np.allclose(table_rows[name]["embedding"], directory_rows[name]["embedding"], atol=1e-6)
