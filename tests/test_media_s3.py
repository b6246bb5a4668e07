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
SECRET = "a-shared-signing-secret-for-tests"


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
    rt, client = env(media={"s3": {"bucket": BUCKET}, "signing_secret": SECRET})
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
    rt, client = env(media={"s3": {"bucket": BUCKET, "prefix": "tenant-a/media"}, "signing_secret": SECRET})
    views, _ = _served(rt, client, provider)
    assert len(objects(s3)) == 5 and all(k.startswith("tenant-a/media/") for k in objects(s3))
    deleted, freed = rt.media.purge(now=time.time() + 200 * 86400)
    assert deleted == 5 and freed > 0
    assert objects(s3) == {}
    assert client.get(path_of(views["front.png"].link)).status_code == 410


def test_an_object_removed_behind_the_connectors_back_answers_410(env, provider, s3):
    rt, client = env(media={"s3": {"bucket": BUCKET}, "signing_secret": SECRET})
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
    rt, client = env(media={"s3": {"bucket": BUCKET}, "signing_secret": SECRET})
    receive(rt, client, provider)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, media={"dir": str(tmp_path / "media"),
                                                                  "s3": {"bucket": BUCKET}, "signing_secret": SECRET})))
    dest = tmp_path / "downloads"
    result = CliRunner().invoke(cli, ["media", "download", MID, "--dest", str(dest), "--config", str(config)])
    assert result.exit_code == 1  # some of the message's media is unavailable (as with a directory)
    assert sorted(p.name for p in dest.iterdir()) == ["front.png", "quote.pdf", "renamed.png", "side.jpg", "spin.gif"]
    assert (dest / "side.jpg").read_bytes() == FILES["/m/side.jpg"][0]


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "HeadObject")


@pytest.mark.parametrize("failure", ["SlowDown", "EndpointConnectionError"])
def test_a_bucket_that_cannot_be_reached_answers_503_not_410_or_500(env, provider, s3, failure):
    from botocore.exceptions import EndpointConnectionError
    rt, client = env(media={"s3": {"bucket": BUCKET}, "signing_secret": SECRET})
    views, zip_link = _served(rt, client, provider)

    def down(**_):
        raise (_client_error("SlowDown", 503) if failure == "SlowDown"
               else EndpointConnectionError(endpoint_url="https://s3.example"))

    rt.media.storage.client.head_object = down
    for link in (views["front.png"].link, zip_link):
        r = client.get(path_of(link), headers={"Accept": "application/json"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "30"
        assert r.get_json()["error"] == "The media store cannot be reached right now; try again in a minute"


def test_one_object_that_cannot_be_deleted_does_not_stop_the_purge(env, provider, s3):
    import time
    rt, client = env(media={"s3": {"bucket": BUCKET}, "signing_secret": SECRET})
    _served(rt, client, provider)
    locked = sorted(objects(s3))[0]
    real = rt.media.storage.client.delete_object

    def delete(Bucket, Key):
        if Key == locked:
            raise _client_error("AccessDenied", 403)
        return real(Bucket=Bucket, Key=Key)

    rt.media.storage.client.delete_object = delete
    later = time.time() + 200 * 86400
    assert rt.media.purge(now=later)[0] == 4
    assert list(objects(s3)) == [locked]
    assert rt.media.purge(now=later)[0] == 0  # still kept for the next run, and only it


def test_a_bucket_without_a_shared_signing_secret_is_a_config_error(tmp_path):
    data = base_config(tmp_path, media={"s3": {"bucket": BUCKET}})
    with pytest.raises(ConfigError) as err:
        load_config(data=data)
    assert any(e.startswith("media: signing_secret: an S3 media store serves several machines")
               for e in err.value.errors), err.value.errors
