"""Attachments that stay reachable: fetched once in the worker, served by signed links,
zipped for "Download all", expired after the retention period."""
from __future__ import annotations

import io
import json
import re
import time
import zipfile
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

import media_files as mf
from conftest import TOKEN, base_config
from connector.config import ConfigError, load_config
from connector.cli import main as cli
from connector.media.collect import MediaBusy
from connector.media.links import LinkSigner
from connector.store import media as media_table
from connector.web import create_app

UNSUPPORTED = "Some media cannot be received due to unsupported format."
UNAVAILABLE = "Some media is unavailable due to an error"
PUBLIC = "https://crm-links.example.com"
MID = "SMmms0001"

FILES = {
    "/m/front.png": (mf.png(), "image/png"),
    "/m/side.jpg": (mf.jpeg(), "image/jpeg"),
    "/m/spin.gif": (mf.gif(), "image/gif"),
    "/m/quote.pdf": (mf.pdf(), "application/pdf"),
    "/m/renamed.gif": (mf.png(), "image/gif"),  # PNG bytes behind a .gif name
    "/m/huge.jpg": (mf.big_jpeg(7 * 1024 * 1024), "image/jpeg"),
    "/m/long.pdf": (mf.pdf(1024 * 1024), "application/pdf"),
    "/m/clip.mp4": (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 500, "video/mp4"),
}
# (path, file_name, declared type) in message order; /m/gone.png answers 404.
ITEMS = [("/m/front.png", "front.png", "image/png"), ("/m/side.jpg", "side.jpg", "image/jpeg"),
         ("/m/spin.gif", "spin.gif", "image/gif"), ("/m/quote.pdf", "quote.pdf", "application/pdf"),
         ("/m/renamed.gif", "renamed.gif", "image/gif"), ("/m/huge.jpg", "huge.jpg", "image/jpeg"),
         ("/m/long.pdf", "long.pdf", "application/pdf"), ("/m/gone.png?X-Amz-Signature=1", "gone.png", "image/png"),
         ("/m/clip.mp4", "clip.mp4", "video/mp4")]


@pytest.fixture
def provider(httpserver):
    for path, (data, ctype) in FILES.items():
        httpserver.expect_request(path).respond_with_data(data, content_type=ctype)
    httpserver.expect_request("/m/gone.png").respond_with_data("expired", status=404)
    return httpserver


@pytest.fixture
def env(make_runtime, provider, tmp_path):
    def make(**extra):
        media = {"dir": str(tmp_path / "media"), "fetch_attempts": 2, "fetch_retry_wait": 0,
                 **extra.pop("media", {})}
        rt = make_runtime(server={"public_base_url": PUBLIC},
                          fetch={"allow_http": True, "allow_hosts": ["localhost"]},
                          media=media, **extra)
        return rt, create_app(rt.config, rt).test_client()
    return make


def url(provider, path: str) -> str:
    return f"http://localhost:{provider.port}{path}"


def receive(rt, client, provider, items=ITEMS, message_id=MID):
    payload = mf.mms_payload(message_id, [(url(provider, p), n, t) for p, n, t in items], TOKEN)
    before = len(provider.log)
    resp = client.post("/webhooks/aircall", json=payload)
    assert resp.status_code == 200, resp.json
    assert len(provider.log) == before  # nothing is fetched on the webhook path
    rt.worker().run_once()
    return {name: t for name, t in rt.store.list_events(limit=5)[0]["targets"].items()}


def body_of(target: dict) -> str:
    return json.dumps(target["rendered"])


def links(text: str) -> list[str]:
    return re.findall(re.escape(PUBLIC) + r"/media/[A-Za-z0-9_.\-]+", text)


def path_of(link: str) -> str:
    return urlsplit(link).path


def fetch_counts(provider) -> dict[str, int]:
    counts: dict[str, int] = {}
    for req, _resp in provider.log:
        counts[req.path] = counts.get(req.path, 0) + 1
    return counts


def test_inbound_mms_is_fetched_once_and_the_entry_links_to_stored_copies(env, provider):
    rt, client = env()
    targets = receive(rt, client, provider)
    assert {t["state"] for t in targets.values()} == {"dry-run"}

    states = [(r["name"], r["state"], r["detected_type"]) for r in rt.store.media_rows(MID)]
    assert states == [
        ("front.png", "available", "image/png"), ("side.jpg", "available", "image/jpeg"),
        ("spin.gif", "available", "image/gif"), ("quote.pdf", "available", "application/pdf"),
        ("renamed.gif", "available", "image/png"), ("huge.jpg", "too_large", None),
        ("long.pdf", "too_large", "application/pdf"), ("gone.png", "unavailable", None),
        ("clip.mp4", "unsupported", "video/mp4")]
    # Both CRMs were written, each file fetched once; the 404 was retried (2 attempts).
    counts = fetch_counts(provider)
    assert counts.pop("/m/gone.png") == 2
    assert counts == {p: 1 for p in FILES}

    for target in ("hubspot", "salesforce"):
        body = body_of(targets[target])
        assert "localhost" not in body  # no provider URL reaches the CRM
        assert UNSUPPORTED in body and UNAVAILABLE in body
    html = targets["hubspot"]["rendered"]["body"]["properties"]["hs_communication_body"]
    assert "<strong>+1 more</strong>" in html  # 5 offered: 4 previews, then the counter
    assert html.count("<img ") == 3  # png, jpeg, gif previews; the PDF preview is a link
    assert "huge.jpg: cannot be received" in html and "clip.mp4: cannot be received" in html
    assert "gone.png: unavailable" in html
    found = list(dict.fromkeys(links(html)))
    assert len(found) == 6  # five files + download all
    assert links(body_of(targets["salesforce"])) and set(links(body_of(targets["salesforce"]))) == set(found)


def _served(rt, client, provider):
    receive(rt, client, provider)
    views, zip_link = rt.media.views(MID)
    return {v.name: v for v in views}, zip_link


def test_links_serve_the_file_with_its_real_type_and_safe_headers(env, provider):
    rt, client = env()
    views, _ = _served(rt, client, provider)
    expected = {"front.png": ("image/png", "inline", FILES["/m/front.png"][0]),
                "side.jpg": ("image/jpeg", "inline", FILES["/m/side.jpg"][0]),
                "spin.gif": ("image/gif", "inline", FILES["/m/spin.gif"][0]),
                "quote.pdf": ("application/pdf", "attachment", FILES["/m/quote.pdf"][0]),
                # PNG bytes sent as "renamed.gif": served as what they are, named to match.
                "renamed.png": ("image/png", "inline", FILES["/m/renamed.gif"][0])}
    for name, (ctype, disposition, data) in expected.items():
        resp = client.get(path_of(views[name].link))
        assert resp.status_code == 200, name
        assert resp.data == data
        assert resp.headers["Content-Type"] == ctype
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Content-Disposition"] == f"{disposition}; filename={name}"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "sandbox" in resp.headers["Content-Security-Policy"]
    for name in ("huge.jpg", "long.pdf", "clip.mp4", "gone.png"):
        assert views[name].link == "" and not (views[name].supported and views[name].available)
    assert views["long.pdf"].reason == "too large (1 MB; the limit is 600 KB)"
    assert views["clip.mp4"].reason == "unsupported format (video/mp4)"


@pytest.mark.parametrize("old", ["", "short"])
def test_a_previous_signing_secret_must_be_a_real_key(tmp_path, old):
    # Every previous secret signs valid links: "${OLD_MEDIA_SECRET:-}" left unset would be
    # the empty key, with which anyone can sign a link to any message's files.
    with pytest.raises(ConfigError) as info:
        load_config(data=base_config(tmp_path, media={"signing_secret": "s" * 32, "previous_signing_secrets": [old]}))
    assert "media.previous_signing_secrets" in str(info.value.errors)


def test_links_signed_with_an_empty_key_are_refused_whatever_the_signer_is_given():
    from itsdangerous import URLSafeSerializer

    from connector.media.links import InvalidLink
    signer = LinkSigner(PUBLIC, "s" * 32, previous=[""])
    forged = URLSafeSerializer("", salt="connector.media.link").dumps({"m": MID, "i": 0, "x": int(time.time()) + 10 ** 8})
    with pytest.raises(InvalidLink):
        signer.read(forged)
    with pytest.raises(ValueError):
        LinkSigner(PUBLIC, "")


def test_tampered_forged_and_extended_links_are_refused(env, provider):
    rt, client = env()
    views, zip_link = _served(rt, client, provider)
    good = path_of(views["front.png"].link)
    token = good.rsplit("/", 1)[1]
    payload, sig = token.rsplit(".", 1)
    tampered = [
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),  # signature altered
        f"/media/{payload}.",  # signature removed
        "/media/" + LinkSigner(PUBLIC, "another-secret-of-enough-length").token(MID, 0, time.time() + 1e9),
        # Same secret's format, but expiry pushed out / index changed without the secret:
        "/media/" + _reencode(payload, x=int(time.time()) + 10 ** 9) + "." + sig,
        "/media/" + _reencode(payload, i=1) + "." + sig,
        "/media/not-a-token",
    ]
    for path in tampered:
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert "This media link is not valid." in resp.get_data(as_text=True)
        assert FILES["/m/front.png"][0] not in resp.data


def _reencode(payload: str, **changes) -> str:
    from itsdangerous import base64_decode, base64_encode
    data = json.loads(base64_decode(payload))
    data.update(changes)
    return base64_encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def test_expired_and_missing_media_answer_410_with_the_article_text(env, provider):
    rt, client = env()
    views, zip_link = _served(rt, client, provider)
    # A link whose signed expiry has passed (what a 6-month-old CRM entry holds).
    old = path_of(rt.media.signer.url(MID, 0, time.time() - 1))
    resp = client.get(old, headers={"Accept": "text/html"})
    assert resp.status_code == 410
    assert resp.mimetype == "text/html"
    assert f"<p>{UNAVAILABLE}</p>" in resp.get_data(as_text=True)
    resp = client.get(old, headers={"Accept": "application/json"})
    assert resp.status_code == 410 and resp.json == {"error": UNAVAILABLE, "status": 410}

    # A file lost from the store (disk replaced, operator deleted it).
    gone = rt.media.attachments(MID)[1]
    rt.media.storage.delete(gone.key)
    resp = client.get(path_of(views["side.jpg"].link))
    assert resp.status_code == 410 and UNAVAILABLE in resp.get_data(as_text=True)

    # Retention over: the row says expired even before purge runs; purge then deletes.
    with rt.store.engine.begin() as conn:
        conn.execute(media_table.update().where(media_table.c.message_id == MID)
                     .values(expires_at=time.time() - 1))
    resp = client.get(path_of(views["front.png"].link))
    assert resp.status_code == 410
    assert client.get(path_of(zip_link)).status_code == 410
    count, freed = rt.media.purge()
    assert count == 4  # front, spin, quote, renamed; side.jpg was already gone
    assert freed == sum(len(FILES[p][0]) for p in ("/m/front.png", "/m/spin.gif", "/m/quote.pdf", "/m/renamed.gif"))
    assert {r["state"] for r in rt.store.media_rows(MID) if r["idx"] < 5} == {"expired"}
    assert rt.media.storage.size(rt.store.media_rows(MID)[0]["path"] or "x") is None
    assert rt.media.purge() == (0, 0)


def test_download_all_zip_has_exact_length_and_lists_what_is_missing(env, provider):
    rt, client = env()
    views, zip_link = _served(rt, client, provider)
    resp = client.get(path_of(zip_link))
    assert resp.status_code == 200
    assert resp.mimetype == "application/zip"
    assert resp.headers["Content-Disposition"] == f"attachment; filename=mms-{MID}.zip"
    body = resp.data
    assert int(resp.headers["Content-Length"]) == len(body)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["front.png", "side.jpg", "spin.gif", "quote.pdf", "renamed.png",
                                 "unavailable.txt"]
        assert zf.read("front.png") == FILES["/m/front.png"][0]
        assert zf.read("renamed.png") == FILES["/m/renamed.gif"][0]
        notes = zf.read("unavailable.txt").decode()
    assert f"- gone.png: {UNAVAILABLE} (unavailable: HTTP 404" in notes
    assert "- huge.jpg: too large (over 5 MB)" in notes
    assert "- long.pdf: too large (1 MB; the limit is 600 KB)" in notes
    assert "- clip.mp4: unsupported format (video/mp4)" in notes
    assert "X-Amz-Signature" not in notes  # presigned query strings never leak


def test_zip_length_is_exact_for_odd_names(env, provider, httpserver):
    rt, client = env()
    items = [("/m/front.png", "facture été.png", "image/png"), ("/m/side.jpg", "../../etc/x.jpg", "image/jpeg"),
             ("/m/spin.gif", "x.jpg", "image/gif"), ("/m/side.jpg", "x.jpg", "image/jpeg"),
             ("/m/quote.pdf", "", "application/pdf")]
    receive(rt, client, provider, items=items, message_id="SModd")
    views, zip_link = rt.media.views("SModd")
    assert [v.name for v in views] == ["facture été.png", "x.jpg", "x.gif", "x (2).jpg", "attachment-5.pdf"]
    resp = client.get(path_of(zip_link))
    assert int(resp.headers["Content-Length"]) == len(resp.data)
    with zipfile.ZipFile(io.BytesIO(resp.data)) as zf:
        assert zf.namelist() == [v.name for v in views]
    resp = client.get(path_of(views[0].link))
    assert resp.headers["Content-Disposition"] == (
        'inline; filename="facture ete.png"; filename*=UTF-8\'\'facture%20%C3%A9t%C3%A9.png')


def test_a_message_with_nothing_receivable_has_an_empty_preview(env, provider):
    rt, client = env()
    targets = receive(rt, client, provider, message_id="SMnone",
                      items=[("/m/clip.mp4", "clip.mp4", "video/mp4"), ("/m/huge.jpg", "huge.jpg", "image/jpeg")])
    body = body_of(targets["hubspot"])
    assert links(body) == []
    assert "<img" not in body and "Download all" not in body
    assert UNSUPPORTED in body


def test_two_workers_fetch_each_attachment_once(env, provider):
    rt, client = env()
    payload = mf.mms_payload("SMrace", [(url(provider, "/m/front.png"), "front.png", "image/png"),
                                        (url(provider, "/m/side.jpg"), "side.jpg", "image/jpeg")], TOKEN)
    client.post("/webhooks/aircall", json=payload)
    # Another worker holds attachment 2: this one fetches only attachment 1, then parks.
    assert rt.store.media_claim("SMrace", 1, name="side.jpg", declared_type="image/jpeg",
                                owner="other", lease_seconds=60)
    from connector.providers.aircall import parse
    event = parse(payload)
    with pytest.raises(MediaBusy):
        rt.media(event)
    assert fetch_counts(provider) == {"/m/front.png": 1}
    d = rt.store.claim("w1", 60, limit=1)[0]
    assert rt.pipeline.process(d) == "retrying"  # parked, not an attempt spent
    assert rt.store.list_events()[0]["targets"][d.target]["attempts"] == 0
    # The other worker died: once its lease runs out, the attachment is taken over.
    assert rt.store.media_claim("SMrace", 1, name="side.jpg", declared_type="image/jpeg",
                                owner="third", lease_seconds=60, now=time.time() + 61)
    assert not rt.store.media_claim("SMrace", 1, name="side.jpg", declared_type="image/jpeg",
                                    owner="fourth", lease_seconds=60)
    with rt.store.engine.begin() as conn:  # "third" died too; its lease is over
        conn.execute(media_table.update().values(lease_until=0).where(media_table.c.state == "fetching"))
    views, link = rt.media(event)
    assert [v.available for v in views] == [True, True] and link
    assert fetch_counts(provider) == {"/m/front.png": 1, "/m/side.jpg": 1}
    rt.media(event)  # later events of the message (status updates) fetch nothing
    assert fetch_counts(provider) == {"/m/front.png": 1, "/m/side.jpg": 1}


def test_private_network_urls_are_not_fetched(make_runtime, tmp_path):
    rt = make_runtime(media={"dir": str(tmp_path / "m2"), "fetch_attempts": 1})
    app = create_app(rt.config, rt).test_client()
    payload = mf.mms_payload("SMssrf", [("http://169.254.169.254/latest/meta-data/", "a.png", "image/png"),
                                        ("https://10.0.0.5/a.png", "b.png", "image/png")], TOKEN)
    app.post("/webhooks/aircall", json=payload)
    rt.worker().run_once()
    rows = rt.store.media_rows("SMssrf")
    assert [r["state"] for r in rows] == ["unavailable", "unavailable"]
    assert "scheme 'http' is not allowed" in rows[0]["reason"]
    assert "non-public address" in rows[1]["reason"]
    # The rest of the message is still delivered.
    assert {t["state"] for t in rt.store.list_events()[0]["targets"].values()} == {"dry-run"}


def test_signing_secret_is_generated_once_and_shared(env, provider, tmp_path):
    rt, client = env()
    views, _ = _served(rt, client, provider)
    secret_file = tmp_path / "media" / ".signing-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    rt2, client2 = env()  # another process sharing the directory
    assert client2.get(path_of(views["front.png"].link)).status_code == 200
    rt3, client3 = env(media={"signing_secret": "x" * 32})
    assert client3.get(path_of(views["front.png"].link)).status_code == 404
    rt4, client4 = env(media={"signing_secret": "x" * 32,
                              "previous_signing_secrets": [secret_file.read_text()]})
    assert client4.get(path_of(views["front.png"].link)).status_code == 200  # rotation


def test_short_signing_secret_is_a_config_error(tmp_path):
    from conftest import base_config
    from connector.config import ConfigError, load_config
    with pytest.raises(ConfigError) as exc:
        load_config(data=base_config(tmp_path, media={"signing_secret": "short"}))
    assert exc.value.errors == ["media.signing_secret: must be at least 16 characters "
                                "(or empty to generate one)"]


def _write_config(rt, tmp_path):
    import yaml
    from conftest import base_config
    cfg = base_config(tmp_path, server={"public_base_url": PUBLIC},
                      media={"dir": str(tmp_path / "media")})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_download_saves_files_with_progress_and_reports_unavailable(env, provider, tmp_path):
    rt, client = env()
    receive(rt, client, provider)
    config = _write_config(rt, tmp_path)
    dest = tmp_path / "downloads"
    result = CliRunner().invoke(cli, ["media", "download", MID, "--dest", str(dest), "--config", config])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in dest.iterdir()) == ["front.png", "quote.pdf", "renamed.png", "side.jpg", "spin.gif"]
    assert (dest / "quote.pdf").read_bytes() == FILES["/m/quote.pdf"][0]
    assert f"Downloaded 5 file(s) to {dest.resolve()}:" in result.stdout
    assert "Not downloaded: clip.mp4: cannot be received (unsupported format (video/mp4))" in result.stdout
    assert UNAVAILABLE in result.stderr
    assert "gone.png: unavailable: HTTP 404" in result.stderr
    assert "<" in result.stderr and "B/s" in result.stderr  # tqdm: elapsed<remaining, rate

    # Again into the same folder: nothing overwritten.
    CliRunner().invoke(cli, ["media", "download", MID, "--dest", str(dest), "--config", config])
    assert (dest / "front (2).png").read_bytes() == FILES["/m/front.png"][0]


def test_cli_download_all_available_exits_zero(env, provider, tmp_path):
    rt, client = env()
    receive(rt, client, provider, message_id="SMok", items=ITEMS[:3])
    config = _write_config(rt, tmp_path)
    result = CliRunner().invoke(cli, ["media", "download", "SMok", "--dest", str(tmp_path / "d"), "--config", config])
    assert result.exit_code == 0, result.output
    assert UNAVAILABLE not in result.output
    result = CliRunner().invoke(cli, ["media", "download", "SMnothing", "--config", config])
    assert result.exit_code == 1 and "No media is stored for message SMnothing." in result.stderr


def test_cli_download_of_expired_media_says_so_and_fails(env, provider, tmp_path):
    rt, client = env()
    receive(rt, client, provider, message_id="SMold", items=ITEMS[:2])
    config = _write_config(rt, tmp_path)
    with rt.store.engine.begin() as conn:
        conn.execute(media_table.update().values(expires_at=time.time() - 1))
    result = CliRunner().invoke(cli, ["media", "purge", "--config", config])
    assert result.exit_code == 0 and result.stdout.startswith("Deleted 2 expired file(s)")
    dest = tmp_path / "d"
    result = CliRunner().invoke(cli, ["media", "download", "SMold", "--dest", str(dest), "--config", config])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == UNAVAILABLE
    assert not dest.exists() or list(dest.iterdir()) == []


def test_example_config_runs_without_environment(tmp_path, monkeypatch):
    from conftest import ROOT
    from connector.config import load_config
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.media.retention_days == 183
    assert cfg.media.signing_secret == ""
    assert cfg.resolve(cfg.media.dir) == ROOT / "data" / "media"


def test_single_files_answer_range_requests(env, provider):
    rt, client = env()
    views, _ = _served(rt, client, provider)
    resp = client.get(path_of(views["quote.pdf"].link), headers={"Range": "bytes=0-7"})
    assert resp.status_code == 206
    assert resp.data == FILES["/m/quote.pdf"][0][:8]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_purge_removes_partial_files_left_by_a_killed_writer(env, provider, tmp_path):
    import os
    rt, client = env()
    receive(rt, client, provider, message_id="SMpart", items=ITEMS[:1])
    stale = tmp_path / "media" / "ab" / ".incoming-x1"
    fresh = tmp_path / "media" / "ab" / ".incoming-x2"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    rt.media.purge()
    assert not stale.exists() and fresh.exists()
    assert client.get(path_of(rt.media.views("SMpart")[0][0].link)).status_code == 200


def test_unsupported_declared_type_that_cannot_be_fetched_shows_the_format_alert(env, provider):
    rt, client = env()
    targets = receive(rt, client, provider, message_id="SMgonevideo",
                      items=[("/m/front.png", "front.png", "image/png"),
                             ("/m/gone.png?v=1", "clip.mov", "video/quicktime")])
    body = body_of(targets["hubspot"])
    assert UNSUPPORTED in body  # "Some media cannot be received due to unsupported format."
    assert "unavailable due to an error" not in body
    [row] = [r for r in rt.store.media_rows("SMgonevideo") if r["name"] == "clip.mov"]
    assert row["state"] == "unsupported" and row["reason"] == "unsupported format (video/quicktime)"


def test_an_animated_png_is_received_as_a_png(env, provider):
    provider.expect_request("/m/sticker.png").respond_with_data(mf.apng(), content_type="image/png")
    rt, client = env()
    receive(rt, client, provider, items=[("/m/sticker.png", "sticker.png", "image/png")], message_id="SMapng")
    [row] = rt.store.media_rows("SMapng")
    assert (row["state"], row["detected_type"], row["path"].endswith(".png")) == ("available", "image/png", True)


def test_a_shortened_retention_applies_to_media_already_stored(env, provider, monkeypatch):
    rt, client = env(media={"retention_days": 183})
    targets = receive(rt, client, provider, items=ITEMS[:1])
    link = links(body_of(targets["hubspot"]))[0]
    assert client.get(path_of(link)).status_code == 200
    # The company shortens retention to 30 days; 40 days later the file and its link are gone.
    rt2, client2 = env(media={"retention_days": 30})
    later = time.time() + 40 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    resp = client2.get(path_of(link))
    assert resp.status_code == 410 and UNAVAILABLE in resp.get_data(as_text=True)
    assert rt2.media.purge() == (1, len(FILES["/m/front.png"][0]))
    assert rt2.store.media_rows(MID)[0]["state"] == "expired"


def test_a_copy_stored_by_a_fetch_that_lost_its_lease_is_not_kept_past_retention(env, provider, httpserver):
    from connector.providers.aircall import parse
    httpserver.expect_ordered_request("/m/flaky.png").respond_with_data(mf.png(), content_type="image/png")
    httpserver.expect_request("/m/flaky.png").respond_with_data("expired", status=404)
    rt, _ = env(media={"fetch_attempts": 1})
    event = parse(mf.mms_payload("SMlease", [(url(httpserver, "/m/flaky.png"), "flaky.png", "image/png")], TOKEN))
    collector = rt.media.collector
    real = collector._fetch_and_keep

    def slow_worker(message_id, idx, item, profile):
        values = real(message_id, idx, item, profile)  # worker A fetched and stored the file...
        # ...but outlived its lease: worker B takes over; the URL has expired: unavailable.
        with rt.store.engine.begin() as conn:
            conn.execute(media_table.update().values(lease_until=0))
        collector._fetch_and_keep = real
        collector.collect(message_id, event.media, rt.config.outbound.profiles["default"])
        return values

    collector._fetch_and_keep = slow_worker
    rt.media(event)
    [row] = rt.store.media_rows("SMlease")
    assert (row["state"], row["path"]) == ("unavailable", None)
    files = [p for p in rt.media.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files == []  # no copy that no row points at (purge would never find it)


@pytest.mark.parametrize("sent, shown", [
    ("\uff0e\uff0e\uff0fetc\uff0fpasswd.png", "passwd.png"),  # fullwidth ../etc/
    ("\ufe68\ufe68x.png", "x.png"),  # small reverse solidus: "\\x.png" in a plain-ASCII name
    ("invoice\u202egnp.pdf", "invoicegnp.pdf"),  # a right-to-left override shows "invoicefdp.png"
])
def test_names_carry_no_look_alike_path_or_direction_tricks(env, provider, sent, shown):
    import unicodedata
    rt, client = env()
    src = "/m/quote.pdf" if sent.endswith(".pdf") else "/m/front.png"
    receive(rt, client, provider, items=[(src, sent, FILES[src][1])], message_id="SMuni")
    [view], _ = rt.media.views("SMuni")
    assert view.name == shown
    disposition = client.get(path_of(view.link)).headers["Content-Disposition"]
    ascii_name = unicodedata.normalize("NFKD", disposition.split("filename=", 1)[1].split(";", 1)[0])
    assert "/" not in ascii_name and "\\" not in ascii_name and "\u202e" not in disposition, disposition


def test_cli_download_into_a_place_that_cannot_be_written_says_so(env, provider, tmp_path):
    rt, client = env()
    receive(rt, client, provider, message_id="SMok", items=ITEMS[:2])
    config = _write_config(rt, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = CliRunner().invoke(cli, ["media", "download", "SMok", "--dest", str(blocker / "sub"), "--config", config])
    assert out.exit_code == 1 and f"cannot write to {blocker / 'sub'}: Not a directory" in out.output
