"""media.s3: the media store in an S3 bucket (moto plays S3), so machines share it
without a shared file system. The same links, zip, ranges and purge as the directory."""
from __future__ import annotations

import io
import zipfile

import boto3
import pytest
from moto import mock_aws

from connector.config import ConfigError, load_config
from connector.media.storage import S3Storage
from tests.conftest import base_config
from test_media import FILES, ITEMS, MID, _served, env, path_of, provider, receive  # noqa: F401  (fixtures)

BUCKET = "acme-mms-media"


@pytest.fixture
def s3(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def objects(client) -> dict[str, int]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: o["Size"] for o in listed}


def test_attachments_are_stored_in_the_bucket_and_served_by_the_same_links(env, provider, s3, tmp_path):
    rt, client = env(media={"s3": {"bucket": BUCKET}})
    views, zip_link = _served(rt, client, provider)
    stored = objects(s3)
    # The five receivable files, under the prefix; nothing in the local directory.
    assert len(stored) == 5 and all(k.startswith("mms-media/") for k in stored)
    assert sorted(stored.values()) == sorted(len(FILES[p][0]) for p in
                                             ("/m/front.png", "/m/side.jpg", "/m/spin.gif", "/m/quote.pdf",
                                              "/m/renamed.gif"))
    media_dir = tmp_path / "media"
    assert not media_dir.exists() or [p.name for p in media_dir.rglob("*") if p.is_file()] in ([], [".signing-secret"])

    resp = client.get(path_of(views["front.png"].link))
    assert resp.status_code == 200 and resp.data == FILES["/m/front.png"][0]
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Length"] == str(len(FILES["/m/front.png"][0]))
    ranged = client.get(path_of(views["quote.pdf"].link), headers={"Range": "bytes=0-7"})
    assert ranged.status_code == 206 and ranged.data == FILES["/m/quote.pdf"][0][:8]
    zipped = client.get(path_of(zip_link))
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as zf:
        assert zf.read("side.jpg") == FILES["/m/side.jpg"][0]
        assert zf.namelist()[:5] == ["front.png", "side.jpg", "spin.gif", "quote.pdf", "renamed.png"]


def test_purge_deletes_expired_objects_and_their_links_answer_410(env, provider, s3):
    import time
    rt, client = env(media={"s3": {"bucket": BUCKET, "prefix": "tenant-a/media"}})
    views, _ = _served(rt, client, provider)
    assert len(objects(s3)) == 5 and all(k.startswith("tenant-a/media/") for k in objects(s3))
    deleted, freed = rt.media.purge(now=time.time() + 200 * 86400)
    assert deleted == 5 and freed > 0
    assert objects(s3) == {}
    assert client.get(path_of(views["front.png"].link)).status_code == 410


def test_an_object_removed_behind_the_connectors_back_answers_410(env, provider, s3):
    rt, client = env(media={"s3": {"bucket": BUCKET}})
    views, _ = _served(rt, client, provider)
    key = next(k for k in objects(s3) if k.endswith(".png"))
    s3.delete_object(Bucket=BUCKET, Key=key)
    answers = {name: client.get(path_of(v.link)).status_code for name, v in views.items() if v.link}
    assert sorted(answers.values()).count(410) == 1


def test_s3_storage_keys_stay_under_the_prefix_and_missing_keys_read_as_gone(s3):
    store = S3Storage(BUCKET, "/p/", client=s3)
    store.put("ab/one.png", b"x" * 10)
    assert objects(s3) == {"p/ab/one.png": 10}
    assert store.size("ab/one.png") == 10 and store.size("ab/two.png") is None
    with store.open("ab/one.png") as f:
        assert f.read() == b"x" * 10
    with pytest.raises(FileNotFoundError):
        store.open("ab/two.png")
    for bad in ("../secret", "/etc/passwd", "ab/../../x", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"")
    assert store.delete("ab/one.png") is True and store.delete("ab/one.png") is False
    assert store.local_path("ab/one.png") is None


def test_bucket_without_boto3_is_a_config_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the s3 extra were not installed
    data = base_config(tmp_path, media={"s3": {"bucket": BUCKET}})
    with pytest.raises(ConfigError) as err:
        load_config(data=data)
    assert "media.s3.bucket: an S3 media store needs boto3: pip install -e '.[s3]'" in err.value.errors


def test_cli_download_reads_from_the_bucket(env, provider, s3, tmp_path):
    import yaml
    from click.testing import CliRunner

    from connector.cli import main as cli
    rt, client = env(media={"s3": {"bucket": BUCKET}})
    receive(rt, client, provider)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, media={"dir": str(tmp_path / "media"),
                                                                  "s3": {"bucket": BUCKET}})))
    dest = tmp_path / "downloads"
    result = CliRunner().invoke(cli, ["media", "download", MID, "--dest", str(dest), "--config", str(config)])
    assert result.exit_code == 1  # some of the message's media is unavailable (as with a directory)
    assert sorted(p.name for p in dest.iterdir()) == ["front.png", "quote.pdf", "renamed.png", "side.jpg", "spin.gif"]
    assert (dest / "side.jpg").read_bytes() == FILES["/m/side.jpg"][0]
