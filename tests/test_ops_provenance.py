"""Provenance round trips: IPTC source type and limner metadata, signed C2PA manifests (with a
certificate chain made in the test), tamper detection, and stripping."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from _ops_photos import photo, png_bytes
from limner.metadata import IPTC_TRAINED, embed
from limner.ops.provenance import read_provenance, sign_c2pa, strip_metadata

META = {"prompt": "a cat", "model": "openai:gpt-image-2", "provider": "openai", "seed": 3}


def jpeg_bytes(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def signing_pair() -> tuple[bytes, bytes]:
    """A test root CA and an end-entity signing certificate (ES256), as PEM chain and key."""
    pytest.importorskip("c2pa", reason="C2PA signing needs c2pa-python")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "limner tests"),
            ]
        )

    def usage(*, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    base = (
        x509.CertificateBuilder()
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
    )
    root = (
        base.subject_name(name("test root")).issuer_name(name("test root")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(ca=True), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        base.subject_name(name("limner signer")).issuer_name(root.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    chain = leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(
        serialization.Encoding.PEM
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, pem_key


@pytest.mark.parametrize(
    ("encode", "media"), [(png_bytes, "image/png"), (jpeg_bytes, "image/jpeg")]
)
def test_iptc_and_metadata_round_trip(encode: Any, media: str) -> None:
    data = embed(encode(photo("chelsea", 96)), media, META)
    info = read_provenance(data)
    assert info.ai_generated and info.digital_source_type == IPTC_TRAINED
    assert info.limner["model"] == "openai:gpt-image-2" and info.limner["seed"] == 3
    assert info.c2pa is None
    plain = read_provenance(encode(photo("chelsea", 96)))
    assert not plain.ai_generated and plain.limner == {}


def test_strip_removes_everything() -> None:
    data = embed(png_bytes(photo("coffee", 64)), "image/png", META)
    clean = read_provenance(strip_metadata(data))
    assert not clean.ai_generated and clean.limner == {} and clean.digital_source_type is None


@pytest.mark.parametrize(
    ("encode", "media"), [(png_bytes, "image/png"), (jpeg_bytes, "image/jpeg")]
)
def test_signed_c2pa_manifest_round_trips_and_detects_tampering(
    signing_pair: tuple[bytes, bytes], encode: Any, media: str
) -> None:
    chain, key = signing_pair
    data = embed(encode(photo("astronaut", 128)), media, META)
    signed = sign_c2pa(
        data,
        cert_chain_pem=chain,
        private_key_pem=key,
        model="openai:gpt-image-2",
        provider="openai",
    )
    info = read_provenance(signed)
    assert info.c2pa is not None and info.c2pa_valid is True
    assert info.c2pa["trusted"] is False  # the test root is in no trust list
    assert info.c2pa["generation"]["model"] == "openai:gpt-image-2"
    assert info.c2pa["signature"]["common_name"] == "limner signer"
    assert info.ai_generated and info.limner["model"] == "openai:gpt-image-2"
    tampered = bytearray(signed)
    tampered[-200] ^= 0xFF  # a byte of the image data, after the manifest
    assert read_provenance(bytes(tampered)).c2pa_valid is False


def test_cli_reads_signs_and_strips(tmp_path: Path, signing_pair: tuple[bytes, bytes]) -> None:
    import json

    from click.testing import CliRunner

    from limner.cli import cli

    chain, key = signing_pair
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    image = tmp_path / "gen.png"
    image.write_bytes(embed(png_bytes(photo("coffee", 64)), "image/png", META))
    runner = CliRunner()
    shown = runner.invoke(cli, ["provenance", str(image)])
    assert (
        shown.exit_code == 0
        and "AI-generated (IPTC): yes" in shown.output
        and "C2PA: no manifest" in shown.output
    )
    signed = runner.invoke(
        cli,
        [
            "provenance",
            str(image),
            "--sign",
            "--cert",
            str(tmp_path / "chain.pem"),
            "--key",
            str(tmp_path / "key.pem"),
            "--json",
        ],
    )
    assert signed.exit_code == 0, signed.output
    body = json.loads(signed.output)
    assert body["c2pa"]["valid"] and body["c2pa"]["generation"]["provider"] == "openai"
    signed_path = Path(body["path"])
    broken = bytearray(signed_path.read_bytes())
    broken[-200] ^= 0xFF
    signed_path.write_bytes(bytes(broken))
    assert runner.invoke(cli, ["provenance", str(signed_path)]).exit_code == 1
    stripped = runner.invoke(
        cli, ["provenance", str(image), "--strip", "-o", str(tmp_path / "clean.png")]
    )
    assert (
        stripped.exit_code == 0
        and read_provenance((tmp_path / "clean.png").read_bytes()).limner == {}
    )


def test_sign_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signing_pair: tuple[bytes, bytes]
) -> None:
    from limner.ops.provenance import sign_from_env

    data = png_bytes(photo("coffee", 48))
    assert sign_from_env(data, model="m", provider="p") == data  # not configured: unchanged
    chain, key = signing_pair
    (tmp_path / "c.pem").write_bytes(chain)
    (tmp_path / "k.pem").write_bytes(key)
    monkeypatch.setenv("LIMNER_C2PA_CERT", str(tmp_path / "c.pem"))
    monkeypatch.setenv("LIMNER_C2PA_KEY", str(tmp_path / "k.pem"))
    info = read_provenance(sign_from_env(data, model="local:sd-turbo", provider="local"))
    assert (
        info.c2pa_valid
        and info.c2pa is not None
        and info.c2pa["generation"]["model"] == "local:sd-turbo"
    )


def test_generated_images_are_signed_when_configured(
    openai_env: Any,
    tmp_path: Path,
    signing_pair: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import limner

    chain, key = signing_pair
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    monkeypatch.setenv("LIMNER_C2PA_CERT", str(tmp_path / "chain.pem"))
    monkeypatch.setenv("LIMNER_C2PA_KEY", str(tmp_path / "key.pem"))
    result = limner.generate("a signed fox", model="openai:gpt-image-2", size="256x256")
    info = read_provenance(result.images[0].path.read_bytes())
    assert info.c2pa_valid is True
    assert info.c2pa is not None and info.c2pa["generation"]["model"] == "openai:gpt-image-2"
    assert info.limner["prompt"] == "a signed fox"
