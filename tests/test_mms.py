"""MMS rules: each broken one at a time, exact texts, partial and strict policies."""
from __future__ import annotations

import pytest

from connector.config import OutboundConfig
from connector.mms import Attachment, format_limit, load, validate
from connector.fetch import FetchPolicy
from tests.mms_samples import sample

MB, KB = 1024 * 1024, 1024
LINE, TO = "+14155550100", "+14155550142"
CFG = OutboundConfig(lines=[{"number": LINE, "id": "1"}, {"number": "+61291234567", "id": "2"},
                            {"number": "+442071234567", "id": "3"},
                            {"number": "+14155550111", "id": "4", "mms": False}])


def att(kind, size=1000, name=None):
    return Attachment(source=name or f"https://cdn.example.com/{kind}", content=sample(kind, size))


def test_valid_mms_sends_every_attachment():
    v = validate(CFG, LINE, TO, "hi", [att("png"), att("jpg"), att("gif"), att("pdf")])
    assert v.ok and v.errors == [] and len(v.media) == 4
    assert [a.format for a in v.attachments] == ["png", "jpg", "gif", "pdf"]


def test_limits_are_formatted_like_the_article():
    assert (format_limit(5 * MB), format_limit(600 * KB), format_limit(1536 * KB)) == ("5 MB", "600 KB", "1.5 MB")


@pytest.mark.parametrize("policy", ["partial", "strict"])
def test_eleven_files(policy):
    v = validate(CFG, LINE, TO, "", [att("png", 100) for _ in range(11)], policy=policy)
    assert v.attachments[10].error == "You can only upload up to 10 files. Please remove some files and try again"
    assert [a.index for a in v.removed] == [10]
    if policy == "partial":
        assert v.ok and len(v.media) == 10
    else:
        assert not v.ok and v.errors == ["You can only upload up to 10 files. Please remove some files and try again"]


def test_image_over_5_mb():
    v = validate(CFG, LINE, TO, "x", [att("png", 5 * MB + 1), att("gif")], policy="partial")
    assert v.attachments[0].error == "Your file size exceeds the limit of 5 MB. Please reduce the file size and try again"
    assert v.ok and v.media == ["https://cdn.example.com/gif"]


def test_pdf_over_600_kb_by_bytes_not_name():
    big_pdf = att("pdf", 600 * KB + 1, name="https://cdn.example.com/photo.png")
    v = validate(CFG, LINE, TO, "x", [big_pdf], policy="strict")
    assert v.errors == ["Your file size exceeds the limit of 600 KB. Please reduce the file size and try again"]
    assert not v.ok and v.attachments[0].format == "pdf"


def test_total_size_removes_only_the_file_that_overflows():
    files = [att("png", 2 * MB), att("jpg", 2 * MB), att("gif", 2 * MB), att("png", 500 * KB)]
    v = validate(CFG, LINE, TO, "x", files, policy="partial")
    assert [a.index for a in v.removed] == [2]
    assert v.attachments[2].error == ("Your total file size exceeds the limit of 5 MB. "
                                      "Please reduce the file size and try again")
    assert len(v.media) == 3


@pytest.mark.parametrize("kind", ["webp", "mp4", "txt"])
def test_unsupported_format_decided_from_bytes(kind):
    v = validate(CFG, LINE, TO, "", [att(kind, name="https://cdn.example.com/looks-like.jpg")])
    assert v.attachments[0].error == "Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"
    # Partial, but nothing left and no text: the reason is the file's error.
    assert not v.ok and v.errors == ["Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"]


def test_unreachable_file_gets_the_generic_error_with_detail():
    broken = Attachment(source="https://cdn.example.com/x.png", load_error="http_error: HTTP 404")
    v = validate(CFG, LINE, TO, "hello", [broken, att("png")])
    assert v.attachments[0].error == "Sorry, the problem has occurred. Please try again later"
    assert v.attachments[0].detail == "http_error: HTTP 404"
    assert v.ok and len(v.media) == 1


def test_recipient_outside_mms_countries():
    v = validate(CFG, LINE, "+33612345678", "x", [att("png")])
    assert v.errors == ["MMS is available only for numbers in the US, Canada, and Australia, "
                        "so the recipient must be located in one of these countries"]


def test_sms_to_other_countries_is_not_an_mms_rule():
    assert validate(CFG, LINE, "+33612345678", "plain text", []).ok


def test_line_outside_mms_countries_and_line_without_mms():
    v = validate(CFG, "+442071234567", TO, "x", [att("png")])
    assert v.errors == ["MMS is available only for numbers in the US, Canada, and Australia; "
                        "the line +442071234567 is not one of them"]
    v = validate(CFG, "+14155550111", TO, "x", [att("png")])
    assert v.errors == ["The line +14155550111 is not MMS capable. Choose a phone number with the SMS MMS badge"]


def test_australian_line_and_recipient():
    assert validate(CFG, "+61291234567", "0412 345 678", "", [att("jpg")]).ok


def test_unknown_line_bad_recipient_long_text_nothing_to_send():
    assert validate(CFG, "+14155559999", TO, "x", []).errors == [
        "The line +14155559999 is not set up for sending (outbound.lines)"]
    assert validate(CFG, "", TO, "x", []).errors == [
        "No line to send from: name one of outbound.lines, or set outbound.default_line"]
    assert validate(CFG, LINE, "12", "x", []).errors == ["The recipient 12 is not a valid phone number"]
    assert validate(CFG, LINE, TO, "x" * 1601, []).errors == ["The text is longer than 1600 characters"]
    assert validate(CFG, LINE, TO, "  ", []).errors == ["Nothing to send: add text or at least one valid attachment"]


def test_carrier_profile_limits():
    cfg = OutboundConfig(lines=[{"number": LINE, "id": "1", "profile": "tight"}],
                         profiles={"tight": {"max_files": 2, "image_max_bytes": 1 * MB,
                                             "total_max_bytes": 1536 * KB, "formats": ["jpg", "png"]}})
    v = validate(cfg, LINE, TO, "x", [att("png", MB + 1), att("gif"), att("jpg", MB), att("png")],
                 policy="partial")
    assert [a.error for a in v.attachments] == [
        "Your file size exceeds the limit of 1 MB. Please reduce the file size and try again",
        "Only jpg, jpeg, or png files are allowed for MMS",
        # Files past the count are removed by position, whatever happened to earlier ones.
        "You can only upload up to 2 files. Please remove some files and try again",
        "You can only upload up to 2 files. Please remove some files and try again",
    ]
    v = validate(cfg, LINE, TO, "x", [att("jpg", MB), att("png", MB)], policy="partial")
    assert v.attachments[1].error == ("Your total file size exceeds the limit of 1.5 MB. "
                                      "Please reduce the file size and try again")


def test_load_reads_local_files_and_skips_beyond_the_count(tmp_path):
    (tmp_path / "a.gif").write_bytes(sample("gif"))
    (tmp_path / "big.png").write_bytes(sample("png", 5 * MB + 10))
    sources = [str(tmp_path / "a.gif"), str(tmp_path / "big.png"), str(tmp_path / "missing.png")]
    loaded = load(sources, CFG.profiles["default"], FetchPolicy(), allow_files=True)
    v = validate(CFG, LINE, TO, "", loaded)
    assert [a.error for a in v.attachments] == [
        None, "Your file size exceeds the limit of 5 MB. Please reduce the file size and try again",
        "Sorry, the problem has occurred. Please try again later"]
    # Without allow_files a path is just a URL with no scheme: refused, never read.
    loaded = load([str(tmp_path / "a.gif")], CFG.profiles["default"], FetchPolicy())
    assert loaded[0].content is None and "scheme" in loaded[0].load_error
