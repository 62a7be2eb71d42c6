"""Synthetic cohort: determinism, written geometry, label structure, PHI canaries, bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from modalities.errors import ReasonCode
from synth import BAD_INPUT_KINDS, SynthConfig, make_bad_corpus, synth_cohort

PATIENTS = 60


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    synth_cohort(out, patients=PATIENTS, seed=3, bad_inputs=len(BAD_INPUT_KINDS))
    return out


@pytest.fixture(scope="module")
def truth(cohort: Path) -> pd.DataFrame:
    df = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str, "planted": str})
    return df.assign(planted=df["planted"].fillna(""))


def _good(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[truth["planted"] == ""]


def _series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.iterdir())]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kinds = len(BAD_INPUT_KINDS)
    synth_cohort(tmp_path / "a", patients=3, seed=11, bad_inputs=kinds)
    synth_cohort(tmp_path / "b", patients=3, seed=11, bad_inputs=kinds)
    synth_cohort(tmp_path / "c", patients=3, seed=12, bad_inputs=kinds)
    a, b, c = (_tree_hashes(tmp_path / x) for x in "abc")
    assert len(a) > 3 * 24
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    first_ct = {v for k, v in c.items() if k.startswith("case_0001/ct/")}
    assert first_ct and set(a.values()).isdisjoint(first_ct)


def test_manifest_layout(cohort: Path, truth: pd.DataFrame) -> None:
    man = _read(cohort / "manifest.csv")
    assert list(man.columns) == ["patient_id", "ct", "mri", "note", "label"]
    assert len(man) == PATIENTS + len(BAD_INPUT_KINDS)
    good = man.iloc[:PATIENTS]
    assert good["patient_id"].is_unique
    assert set(good["label"]) == {"0", "1"}
    for _, row in good.iterrows():
        for col in ("ct", "mri", "note"):
            if row[col]:
                assert (cohort / row[col]).exists()
                assert row["patient_id"] not in row[col]  # folders are not named by MRN
                assert row[col].startswith("case_")
    # Missing modalities are empty cells, at roughly the configured rates.
    assert (good["ct"] != "").all()
    assert 0 < (good["mri"] == "").sum() <= PATIENTS * 0.3
    assert (good["note"] == "").sum() <= PATIENTS * 0.2
    assert (truth["manifest_patient_id"] == man["patient_id"]).all()


def test_dicom_geometry_matches_truth(cohort: Path, truth: pd.DataFrame) -> None:
    good = _good(truth)
    assert good["ct_reversed_z"].any() and not good["ct_reversed_z"].all()
    for _, t in good.head(8).iterrows():
        slices = _series(cohort / t["case"] / "ct")
        assert len(slices) == t["ct_slices"]
        by_instance = sorted(slices, key=lambda d: int(d.InstanceNumber))
        z = [float(d.ImagePositionPatient[2]) for d in by_instance]
        steps = np.diff(z)
        expected_step = -t["ct_slice_spacing"] if t["ct_reversed_z"] else t["ct_slice_spacing"]
        np.testing.assert_allclose(steps, expected_step, atol=1e-3)
        assert min(z) == pytest.approx(t["ct_origin_z"])
        for d in slices:
            assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert d.SOPClassUID == CTImageStorage and d.Modality == "CT"
            assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
            iop = [float(v) for v in d.ImageOrientationPatient]
            assert iop == [float(v) for v in t["ct_orientation"].split("\\")]
            assert [float(v) for v in d.PixelSpacing] == [t["ct_pixel_spacing"]] * 2
            assert float(d.SliceThickness) == t["ct_slice_spacing"]
            assert float(d.SpacingBetweenSlices) == t["ct_slice_spacing"]
            assert float(d.ImagePositionPatient[0]) == pytest.approx(t["ct_origin_x"])
            assert float(d.ImagePositionPatient[1]) == pytest.approx(t["ct_origin_y"])
            assert (d.Rows, d.Columns) == (t["ct_rows"], t["ct_columns"])
            assert float(d.RescaleIntercept) == -1024 and float(d.RescaleSlope) == 1
            assert d.pixel_array.dtype == np.int16
        assert len({d.SeriesInstanceUID for d in slices}) == 1
        assert len({d.SOPInstanceUID for d in slices}) == len(slices)
        # File names are random tokens: name order is not slice order.
        name_order = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)
                      for f in sorted((cohort / t["case"] / "ct").iterdir())]
        assert name_order != sorted(name_order)


def test_ct_lesion_where_truth_says(cohort: Path, truth: pd.DataFrame) -> None:
    good = _good(truth)
    pos = good[good["ct_finding"] == 1].head(4)
    assert len(pos) >= 2
    for _, t in pos.iterrows():
        slices = _series(cohort / t["case"] / "ct")
        vol = {round(float(d.ImagePositionPatient[2]), 3): d.pixel_array.T for d in slices}
        zs = sorted(vol)
        k = round((t["ct_lesion_z"] - t["ct_origin_z"]) / t["ct_slice_spacing"])
        i = round((t["ct_lesion_x"] - t["ct_origin_x"]) / t["ct_pixel_spacing"])
        j = round((t["ct_lesion_y"] - t["ct_origin_y"]) / t["ct_pixel_spacing"])
        hu = vol[zs[k]][i - 1 : i + 2, j - 1 : j + 2].astype(float).mean() - 1024
        assert hu == pytest.approx(40 + t["ct_lesion_hu"], abs=15)


def test_nifti_affine_and_flips_match_truth(cohort: Path, truth: pd.DataFrame) -> None:
    good = _good(truth)
    with_mri = good[good["mri_present"].astype(str) == "True"]
    flips = with_mri[["mri_flip_i", "mri_flip_j", "mri_flip_k"]].astype(str) == "True"
    assert flips.to_numpy().any() and not flips.to_numpy().all()
    for _, t in with_mri.head(10).iterrows():
        img = nib.load(cohort / t["case"] / "mri.nii.gz")
        np.testing.assert_allclose(img.affine, np.array(json.loads(t["mri_affine"])), atol=1e-4)
        assert img.shape == (32, 32, 32)
        np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), 2.0)
        for ax, col in enumerate(("mri_flip_i", "mri_flip_j", "mri_flip_k")):
            assert (img.affine[ax, ax] < 0) == (str(t[col]) == "True")
        if t["mri_finding"] == 1:  # the bright region sits where truth says, in world space
            canon = nib.as_closest_canonical(img).get_fdata()
            c = np.rint([t["mri_region_i"], t["mri_region_j"], t["mri_region_k"]]).astype(int)
            region = canon[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2]
            assert region.mean() > 1.3 * np.median(canon[canon > 100])


def test_label_depends_on_several_modalities(truth: pd.DataFrame) -> None:
    good = _good(truth)
    votes = (good[["ct_finding", "mri_finding", "note_finding"]].sum(axis=1) >= 2).astype(int)
    flipped = good["label_flipped"].astype(str) == "True"
    assert ((votes != good["label"]) == flipped).all()
    for m in ("ct", "mri", "note"):
        agree = (good[f"{m}_finding"] == good["label"]).mean()
        assert 0.6 < agree < 0.9, (m, agree)


def test_phi_written_into_raw_files(cohort: Path) -> None:
    phi = json.loads((cohort / "phi.json").read_text())
    assert {"names", "mrns", "birth_dates", "phones"} <= set(phi)
    assert len(phi["mrns"]) >= PATIENTS and len(phi["phones"]) >= PATIENTS * 0.8
    for p in phi["patients"][:15]:
        blob = b"".join(f.read_bytes() for f in sorted((cohort / p["case"]).rglob("*"))
                        if f.is_file() and not f.name.endswith(".gz"))
        kinds = ("names", "dicom_names", "mrns", "birth_dates", "visit_dates", "phones")
        for kind in kinds:
            for value in p[kind]:
                assert value.encode() in blob, (kind, p["case"])
        assert p["mrns"] and p["dicom_names"] and p["birth_dates"]
    # Notes carry the cues a de-identifier keys on.
    note = next(cohort.glob("case_*/note.txt")).read_text()
    assert "MRN" in note and ("Patient" in note or "Name:" in note)


def test_bad_inputs_planted_as_recorded(cohort: Path) -> None:
    man = _read(cohort / "manifest.csv")
    exp = _read(cohort / "expected_quarantine.csv")
    assert set(exp["kind"]) == {*BAD_INPUT_KINDS, "duplicated"}
    rows = {k: man.iloc[int(exp[exp["kind"] == k]["row"].iloc[0])] for k in BAD_INPUT_KINDS}
    ct = {k: cohort / rows[k]["ct"] for k in rows}

    sizes = [f.stat().st_size for f in ct["truncated_slice"].iterdir()]
    assert min(sizes) < max(sizes)
    with pytest.raises(ValueError):
        for f in ct["truncated_slice"].iterdir():
            pydicom.dcmread(f).pixel_array  # noqa: B018
    assert len(list(ct["missing_slice"].iterdir())) == 23
    mixed = {d.SeriesInstanceUID for d in _series(ct["mixed_series"])}
    assert len(mixed) == 2
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(next(ct["not_dicom"].iterdir()))
    assert (cohort / rows["empty_note"]["note"]).read_bytes() == b""
    assert b"\x00" in (cohort / rows["binary_note"]["note"]).read_bytes()
    dup = rows["duplicate_id"]["patient_id"]
    assert (man["patient_id"] == dup).sum() == 2
    assert rows["bad_label"]["label"] == "maybe"
    assert rows["outside_root"]["mri"] == "../outside.nii.gz"
    assert not (cohort / rows["missing_file"]["mri"]).exists()
    assert np.isnan(nib.load(cohort / rows["nan_nifti"]["mri"]).get_fdata()).any()
    assert {d.Modality for d in _series(ct["mr_as_ct"])} == {"MR"}

    codes = dict(zip(exp["kind"] + ":" + exp["modality"], exp["expected_code"], strict=True))
    assert codes["truncated_slice:ct"] == ReasonCode.TRUNCATED_FILE
    assert codes["mr_as_ct:ct"] == ReasonCode.WRONG_MODALITY
    assert codes["outside_root:mri"] == ReasonCode.PATH_OUTSIDE_ROOT
    # Row-level problems reject every given input of the row, the duplicated good row too.
    assert set(exp[exp["patient_id"] == dup]["expected_code"]) == {"DUPLICATE_PATIENT"}
    assert (exp["kind"] == "duplicated").any()
    assert set(exp[exp["kind"] == "bad_label"]["modality"]) == {
        m for m in ("ct", "mri", "note") if rows["bad_label"][m]
    }
    # The good patients expect nothing.
    good_ids = set(man.iloc[:PATIENTS]["patient_id"]) - {dup}
    assert good_ids.isdisjoint(exp["patient_id"])


def test_slices_are_what_pydicom_would_write(cohort: Path) -> None:
    f = next((cohort / "case_0001" / "ct").iterdir())
    buf = io.BytesIO()
    pydicom.dcmread(f).save_as(buf, enforce_file_format=True)
    assert buf.getvalue() == f.read_bytes()


def test_bad_corpus_covers_every_reason_code(tmp_path: Path) -> None:
    df = make_bad_corpus(tmp_path / "bad")
    # TIMEOUT and INTERNAL_ERROR need an injected fault (tests/modalities/test_ingest_safety.py).
    injected = {str(ReasonCode.TIMEOUT), str(ReasonCode.INTERNAL_ERROR)}
    assert set(df["expected_code"]) - {""} == {str(c) for c in ReasonCode} - injected
    man = _read(tmp_path / "bad" / "manifest.csv")
    assert list(man.columns) == ["patient_id", "ct", "mri", "note", "label", "split"]
    assert len(man) == len(df)
    control = df[df["expected_code"] == ""].iloc[0]
    for col in ("ct", "mri", "note"):
        assert (tmp_path / "bad" / control[col]).exists()
    assert (df["expected_code"] == "DUPLICATE_PATIENT").sum() == 2


def test_config_knobs(tmp_path: Path) -> None:
    cfg = SynthConfig(ct_shape=(20, 16, 10), ct_slice_spacing=3.0, mri_missing_rate=1.0,
                      note_missing_rate=1.0, ct_reversed_z_rate=0.0)
    res = synth_cohort(tmp_path / "k", patients=2, seed=0, config=cfg)
    assert (res.manifest["mri"] == "").all() and (res.manifest["note"] == "").all()
    d = _series(tmp_path / "k" / res.manifest["ct"][0])
    assert len(d) == 10 and (d[0].Rows, d[0].Columns) == (16, 20)
    assert float(d[0].SpacingBetweenSlices) == 3.0
    with pytest.raises(ValueError):
        SynthConfig(label_noise=2.0)


def test_interaction_cohort_label_is_ct_xor_note(tmp_path: Path) -> None:
    cfg = SynthConfig(label_rule="xor", modalities=("ct", "note"), ct_shape=(16, 16, 10))
    res = synth_cohort(tmp_path, patients=40, seed=3, config=cfg)
    assert list(res.manifest.columns) == ["patient_id", "ct", "note", "label"]
    assert not list(tmp_path.rglob("*.nii.gz"))  # MRI is drawn but never written
    t = res.truth
    clean = t[~t["label_flipped"]]
    assert (clean["label"] == (clean["ct_finding"] ^ clean["note_finding"])).all()
    # Each finding alone says nothing about the label: both values of it see both labels.
    for m in ("ct", "note"):
        assert t.groupby(f"{m}_finding")["label"].nunique().min() == 2
    # The default stays the majority vote, and the streams stay aligned: same findings.
    maj = synth_cohort(tmp_path / "maj", patients=40, seed=3,
                       config=SynthConfig(ct_shape=(16, 16, 10)))
    assert (maj.truth["ct_finding"] == t["ct_finding"]).all()
    with pytest.raises(ValueError):
        SynthConfig(label_rule="xor", modalities=("ct",))
