"""Loading from the Hugging Face Hub cache: the layout huggingface_hub writes (`models--ORG--NAME/blobs/<hash>`,
`snapshots/<rev>/<file>` as relative symlinks into `../../blobs`, `refs/main`), built here file by file as
huggingface_hub's `hf_hub_download` writes it, for single-file and sharded, Flax and PyTorch layouts; loaded by
Hub id offline (`local_files_only=True`, and `HF_HUB_OFFLINE=1` with `HF_HUB_CACHE` in a fresh process) and by
snapshot path. The params must equal the source's bit for bit. A real escape stays refused: an index naming
`../x.safetensors` or an absolute path, or a listed shard that is a symlink out of the repo.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_TORCH, REPO, assert_params_identical

REPO_ID = "test-org/tiny-xlstm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LAYOUTS = ["flax_single", "flax_sharded", "pt_single", "pt_sharded", "msgpack_sharded"]
PT_KW = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_heads=2, qk_dim_factor=0.5, chunk_size=128)


def _blob_name(path: Path, data: bytes) -> str:
    """huggingface_hub names a blob by the file's etag: sha256 of an LFS file (weights), git's sha1 of the rest."""
    if path.suffix in (".safetensors", ".msgpack", ".bin"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT) -> Path:
    """Put the files of folder `source` into `cache` as huggingface_hub stores a download of `repo_id` at
    `commit`: one blob per content under `blobs/`, each file of the snapshot a relative symlink to its blob (nested
    files too), `refs/main` holding the commit. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / _blob_name(file, data)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _pt_config():
    from transformers import xLSTMConfig

    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config

    return from_transformers_config(xLSTMConfig(**PT_KW, dtype="float32"))


def _write_layout(layout: str, model, folder: Path) -> None:
    """`model` saved in `layout`: ours (save_pretrained) or transformers' PyTorch layout (our converter, which
    writes what transformers' xLSTMForCausalLM.save_pretrained writes: tests/test_checkpoint_matrix.py)."""
    from modeling_xlstm_flax.convert_common import convert_flax_to_pytorch

    sharded = {"max_shard_size": "40KB"} if layout.endswith("sharded") else {}
    if layout.startswith("flax"):
        model.save_pretrained(folder, **sharded)
    elif layout.startswith("msgpack"):
        model.save_pretrained(folder, safe_serialization=False, **sharded)
    else:
        model.save_pretrained(folder.parent / (folder.name + "_flax"))
        convert_flax_to_pytorch(folder.parent / (folder.name + "_flax"), folder, **sharded)
        assert json.loads((folder / "config.json").read_text())["model_type"] == "xlstm"  # transformers' own
    index = [p.name for p in folder.glob("*.index.json")]
    assert bool(index) == bool(sharded), (layout, sorted(p.name for p in folder.iterdir()))
    if sharded:
        weight_map = json.loads((folder / index[0]).read_text())["weight_map"]
        assert len(set(weight_map.values())) > 1


@pytest.fixture(scope="module")
def source_model():
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM(_pt_config(), seed=7)


@pytest.fixture(scope="module")
def hub_cache(source_model, tmp_path_factory):
    """{layout: snapshot folder} in one cache folder, one repo per layout."""
    root = tmp_path_factory.mktemp("hub")
    snapshots = {}
    for layout in LAYOUTS:
        _write_layout(layout, source_model, root / "src" / layout)
        snapshots[layout] = write_hub_cache(root / "cache", f"{REPO_ID}-{layout}", root / "src" / layout)
    return root / "cache", snapshots


def _load(name_or_path, **kwargs):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM.from_pretrained(name_or_path, _do_init=False, **kwargs)[1]


def test_cache_layout_is_what_huggingface_hub_reads(hub_cache):
    """The layout built here is the one huggingface_hub itself resolves offline (its own cache scanner agrees)."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    cache, snapshots = hub_cache
    info = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}
    for layout, snapshot in snapshots.items():
        repo = info[f"{REPO_ID}-{layout}"]
        assert [r.commit_hash for r in repo.revisions] == [COMMIT] and repo.refs["main"].commit_hash == COMMIT
        config = try_to_load_from_cache(f"{REPO_ID}-{layout}", "config.json", cache_dir=cache)
        assert Path(config) == snapshot / "config.json" and Path(config).is_symlink()
        assert all(p.is_symlink() and not os.path.isabs(os.readlink(p)) for p in snapshot.iterdir())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_by_hub_id_offline_and_by_snapshot_path(hub_cache, source_model, layout):
    cache, snapshots = hub_cache
    from_pt = {"from_pt": True} if layout.startswith("pt") else {}  # as a user of a PyTorch repo writes it
    by_id = _load(f"{REPO_ID}-{layout}", cache_dir=cache, local_files_only=True, **from_pt)
    assert_params_identical(by_id, source_model.params, f"{layout} by id")
    by_path = _load(snapshots[layout])
    assert_params_identical(by_path, source_model.params, f"{layout} by snapshot path")


_OFFLINE_SCRIPT = """
import sys
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from conftest import assert_params_identical
source = FlaxXLSTMForCausalLM.from_pretrained(sys.argv[1], _do_init=False)[1]
for repo in sys.argv[2:]:
    assert_params_identical(FlaxXLSTMForCausalLM.from_pretrained(repo, _do_init=False)[1], source, repo)
print("loaded", len(sys.argv) - 2)
"""


@pytest.mark.slow
def test_hf_hub_offline_and_hf_hub_cache_environment(hub_cache, tmp_path):
    """As a user runs it: `HF_HUB_OFFLINE=1 HF_HUB_CACHE=...` set before the process starts (huggingface_hub reads
    them at import), repos named by id only."""
    cache, snapshots = hub_cache
    env = {**os.environ, **NO_TORCH, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop("HF_HOME", None)
    repos = [f"{REPO_ID}-{layout}" for layout in ("flax_sharded", "pt_sharded")]
    result = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(snapshots["flax_single"].resolve()), *repos],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded 2" in result.stdout


def test_subfolder_in_the_cache(source_model, tmp_path):
    """A model in a subfolder of a repo: its shards link to `../../../blobs/...`."""
    _write_layout("flax_sharded", source_model, tmp_path / "src" / "sub")
    snapshot = write_hub_cache(tmp_path / "cache", REPO_ID, tmp_path / "src")
    assert os.readlink(next((snapshot / "sub").glob("*.safetensors"))).startswith("../../../blobs/")
    assert_params_identical(_load(REPO_ID, subfolder="sub", cache_dir=tmp_path / "cache", local_files_only=True),
                            source_model.params)
    assert_params_identical(_load(snapshot, subfolder="sub"), source_model.params)
    assert_params_identical(_load(snapshot / "sub"), source_model.params)


# ---------------------------------------------------------------------------------------------- escapes refused
def _sharded_copy(source_model, tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "cache" / "models--o--m" / "snapshots" / COMMIT
    _write_layout("flax_sharded", source_model, tmp_path / "src")
    snapshot = write_hub_cache(tmp_path / "cache", "o/m", tmp_path / "src")
    assert snapshot == folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder, index


def _rewrite_index(folder: Path, index: dict) -> None:
    path = folder / "model.safetensors.index.json"
    path.unlink()  # the snapshot's symlink: replace it by a file (the blob stays as it is)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("name", [
    "../x.safetensors", "../../blobs/{blob}", "sub/../../x.safetensors", "/abs/x.safetensors", "{absolute}",
    "", ".", "sub/", "C:x.safetensors", "..\\x.safetensors", "x\x00.safetensors",
])
def test_index_names_outside_the_folder_are_refused(source_model, tmp_path, name):
    """The name the index gives is judged as written: relative, inside the folder, no `..`, no drive, no
    backslash, no empty part; even a name that would land on a real blob of the same repo is refused."""
    folder, index = _sharded_copy(source_model, tmp_path)
    tensor, shard = next(iter(index["weight_map"].items()))
    blob = os.path.basename(os.readlink(folder / shard))
    (tmp_path / "x.safetensors").write_bytes((folder / shard).read_bytes())
    index["weight_map"][tensor] = name.format(blob=blob, absolute=str((folder / shard).resolve()))
    _rewrite_index(folder, index)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: tensor .* is mapped to .*refus"):
        _load(folder)


def test_shard_symlinked_out_of_the_repo_is_refused(source_model, tmp_path):
    folder, index = _sharded_copy(source_model, tmp_path)
    shard = next(iter(index["weight_map"].values()))
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((folder / shard).read_bytes())
    (folder / shard).unlink()
    os.symlink(os.path.relpath(outside, folder), folder / shard)
    expected = rf"{re.escape(shard)}', a symbolic link to {re.escape(str(outside))}, outside the model folder"
    with pytest.raises(ValueError, match=expected):
        _load(folder)
    (folder / shard).unlink()  # the same link made absolute: refused the same way
    os.symlink(outside, folder / shard)
    with pytest.raises(ValueError, match="outside"):
        _load(folder)


def test_shard_symlink_into_another_cached_repo_is_refused(source_model, tmp_path):
    """A link from one repo's snapshot into another repo's blobs is an escape too (the repo, not the cache, bounds
    what its index can read)."""
    folder, index = _sharded_copy(source_model, tmp_path)
    other = write_hub_cache(tmp_path / "cache", "o/other", tmp_path / "src")
    shard = next(iter(index["weight_map"].values()))
    (folder / shard).unlink()
    os.symlink(os.path.relpath((other / shard).resolve(), folder), folder / shard)
    with pytest.raises(ValueError, match="outside"):
        _load(folder)


def test_plain_folder_with_shards_linked_inside_it_loads(source_model, tmp_path):
    """Outside the Hub cache a folder may link its shards to files inside itself."""
    _write_layout("flax_sharded", source_model, tmp_path / "m")
    shard = next((tmp_path / "m").glob("model-0*.safetensors"))
    (tmp_path / "m" / "store").mkdir()
    shard.rename(tmp_path / "m" / "store" / shard.name)
    os.symlink(Path("store") / shard.name, shard)
    assert_params_identical(_load(tmp_path / "m"), source_model.params)


@pytest.mark.parametrize("subfolder", ["../other", "/abs", "a/../../b"])
def test_subfolder_that_leaves_the_model_folder_is_refused(source_model, tmp_path, subfolder):
    source_model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"subfolder"):
        _load(tmp_path / "m", subfolder=subfolder)
