"""`vit-serve embed` (service/bulk/job.py) as a user runs it, in a process of its own: every image
of a source embedded exactly as the server embeds it, a second run that finds everything done, a
run killed mid-way finished by the next without a row lost or repeated, bad files recorded in
their rows, and another model refused; and, in this process, the Embedder's groups and window."""

from __future__ import annotations

import base64
import contextlib
import os
import pty
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from service.bulk.job import Embedder
from service.bulk.output import MANIFEST, Row
from service.bulk.sources import Item, in_memory
from service.settings import Settings
from tests.images import encode, gradient, photo
from tests.service import bombs
from tests.service.bulk.test_sources import shard
from tests.service.engine.test_device_decode import needs_gpu
from tests.service.servers import live_server, tiny_settings

DIGITS = Path(__file__).parents[3] / "examples" / "digits"
QUIET = ["--log-level", "warning", "--dtype", "float32"]  # float32: compared with the server's numbers


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "service", "embed", *map(str, args), *QUIET]


ENV = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}


def embed(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command(*args), env=ENV, capture_output=True, text=True, timeout=300)
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
    assert re.search(r"^10 of 10 images \(0 failed\), [\d,.]+ images/s, 0 s to go$", first.stderr, re.M)  # a log line
    busy = re.search(r"the model was busy (\d+) % of that time, in (\d+) batches of ([\d.]+) images", first.stderr)
    assert busy and 0 < int(busy[1]) <= 100 and round(int(busy[2]) * float(busy[3])) == 10, first.stderr
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


def test_on_a_terminal_the_progress_line_is_redrawn_in_place(tmp_path: Path) -> None:
    main, terminal = pty.openpty()
    with subprocess.Popen(
        command(DIGITS, "--out", tmp_path / "out"), env=ENV, stderr=terminal, stdout=subprocess.DEVNULL
    ) as job:
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO: the job has closed its end
            while chunk := os.read(main, 4096):
                shown += chunk
        assert job.wait(timeout=300) == 0, shown
    os.close(main)
    assert re.search(rb"\r10 of 10 images \(0 failed\), [\d,.]+ images/s, 0 s to go\r?\n", shown), shown


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
    proc = subprocess.Popen(command(source, "--out", out, "--shard-size", "20"), env=ENV, stderr=subprocess.DEVNULL)
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


def test_a_source_cut_short_mid_run_ends_it_in_one_line_with_the_rows_before_it_kept(tmp_path: Path) -> None:
    data = (DIGITS / "digit-0-39.png").read_bytes()  # 326 bytes: a 512-byte header and 512 of data a member
    for index, names in enumerate(("abc", "def")):
        shard(tmp_path / f"shard-00{index}.tar", {f"{name}.png": data for name in names})
    cut = tmp_path / "shard-001.tar"
    cut.write_bytes(cut.read_bytes()[: 1024 + 512 + 100])  # a copy cut short inside "e"
    done = embed(tmp_path / "shard-*.tar", "--out", tmp_path / "out", check=False)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "shard-001.tar: not a readable tar shard" in line and "the source failed mid-run" in line
    assert "every image before it has its row (4 rows in all)" in line
    assert sorted(table(tmp_path / "out")) == ["a", "b", "c", "d"]


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
    full = subprocess.run(
        command(DIGITS, "--out", out, "--shard-size", "4"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _disk_full_after(3000),
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


async def _rows(settings: Settings, *groups: list[Item]) -> list[list[Row]]:
    """Each group's rows, by one Embedder whose random weights are the same on every call."""
    torch.manual_seed(0)
    embedder = await Embedder.start(settings)
    try:
        return [await embedder.rows(group) for group in groups]
    finally:
        await embedder.close()


async def test_a_group_keeps_its_order_and_a_bad_image_fails_only_its_own_row() -> None:
    good, other = encode(photo(), "JPEG"), encode(gradient(64, 48), "PNG")
    group = [in_memory("a", good, 10**7), in_memory("b", b"", 10**7), in_memory("c", b"not an image", 10**7)]
    group += [in_memory("d", other, 10**7)]
    rows, *alone = await _rows(tiny_settings(), group, [in_memory("a", good, 10**7)], [in_memory("d", other, 10**7)])
    assert [row.key for row in rows] == ["a", "b", "c", "d"]
    assert rows[1].error == "unreadable: empty file" and rows[1].embedding is None
    assert rows[2].error is not None and rows[2].error.startswith("not decoded: ") and rows[2].embedding is None
    for row, [single] in zip((rows[0], rows[3]), alone, strict=True):
        assert row.error is None and np.allclose(row.embedding, single.embedding, atol=1e-5)


async def test_the_stream_reads_ahead_at_most_its_window_and_yields_each_row_once() -> None:
    """With batches of 8 the window is 16 images: the source is read lazily, never far ahead."""
    pulled = 0
    good = encode(gradient(32, 32), "PNG")

    def source() -> Iterator[Item]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield in_memory(str(i), good, 10**7)

    embedder = await Embedder.start(tiny_settings(max_batch_size=8))
    try:
        seen: list[str] = []
        async with contextlib.aclosing(embedder.stream(source())) as groups:
            async for group in groups:
                assert pulled - len(seen) <= 16 + 2  # in flight: the window, and the group being formed
                seen += [row.key for row in group]
    finally:
        await embedder.close()
    assert sorted(seen, key=int) == [str(i) for i in range(100)]


async def test_asked_to_decode_on_the_gpu_a_cpu_model_embeds_as_without() -> None:
    jpeg = [in_memory("a", encode(photo(), "JPEG"), 10**7)]
    [[on]], [[off]] = [await _rows(tiny_settings(gpu_decode=flag), jpeg) for flag in (True, False)]
    assert np.array_equal(on.embedding, off.embedding)


@needs_gpu
async def test_on_a_gpu_jpegs_decoded_there_embed_as_cpu_decoded_ones_and_a_corrupt_one_fails_alone() -> None:
    jpeg = encode(photo(), "JPEG")
    group = [in_memory("a", jpeg, 10**7), in_memory("b", jpeg[: len(jpeg) // 3], 10**7)]
    group += [in_memory("c", encode(photo(), "PNG"), 10**7), in_memory("d", jpeg, 10**7)]
    rows = {}
    for on_gpu in (False, True):
        settings = tiny_settings(device="cuda", compile=False, gpu_decode=on_gpu, jpeg_draft=False)
        [rows[on_gpu]] = await _rows(settings, group)
    assert rows[True][1].embedding is None and rows[True][1].error.startswith("not decoded: ")
    for i in (0, 2, 3):
        cpu, gpu = (torch.from_numpy(rows[flag][i].embedding).float() for flag in (False, True))
        assert torch.nn.functional.cosine_similarity(cpu, gpu, dim=0) >= 0.999
