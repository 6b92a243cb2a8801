"""What a user's command may touch and what a run records (issue 32's cases, numbered as there): the commands the
product prints run as written; predict.py never replaces a file it did not write; a manifest is split by speaker;
a recipe value is checked as its flag; every reader of a run folder refuses an unfinished run; ensembles are of one
corpus and share folds; --test_only applies or refuses each flag; records are what ran; damaged files are one line."""
import json
import shlex
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

import compare
import ensemble
import main as main_cli
import predict
import preprocess as preprocess_module
from conftest import ROOT
from errors import FlagError
from options import get_parser, parse_args
from protocol import resolve_data
from test_bad_input import one_line_error_here
from test_corpora import make_emodb, voice
from test_recipe import _member
from test_train import TINY

ONE_EPOCH = [a if a != "2" else "1" for a in TINY]


@pytest.fixture(scope="module")
def finished(demo_dir, tmp_path_factory):
    """A finished one-epoch run on the demo corpus (speaker normalisation, band statistics as functionals)."""
    save = tmp_path_factory.mktemp("exp")
    main_cli.main(["--data_dir", str(demo_dir), "--save_path", str(save)] + ONE_EPOCH)
    return next(save.iterdir())


def copy_run(run, tmp_path, name="run"):
    return shutil.copytree(run, tmp_path / name)


def test_0_the_commands_the_readme_and_the_product_print_run_as_written(tmp_path, capsys):
    preprocess_module.main(["--make_demo", str(tmp_path / "demo"), "--sessions", "2", "--turns", "4"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    command = shlex.split(printed.split("next: ", 1)[1])
    assert command[:2] == ["python", "preprocess.py"]
    preprocess_module.main(command[2:])  # no --text_dim: the encoder's width (tf-idf: 768)
    assert (tmp_path / "demo" / "embedding_768.npy").exists()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`python preprocess.py --data_dir DIR`" in readme
    preprocess_module.main(["--data_dir", str(make_emodb(tmp_path / "EmoDB"))])  # no transcripts: zero vectors
    assert json.loads((tmp_path / "EmoDB" / "embedding_768.json").read_text())["encoder"] == "none"


def test_1_predict_out_never_replaces_what_it_did_not_write(finished, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    voice(mine / "u0.wav", 180)
    wav = (mine / "u0.wav").read_bytes()
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    empty = tmp_path / "empty.json"  # a user's JSON list, empty: not a table of predict.py's
    empty.write_text("[]")
    run = copy_run(finished, tmp_path)
    weights = (run / "best.pth").read_bytes()
    base = ["--run", str(run), "--input_dir", str(mine)]
    for out, message in ((mine / "u0.wav", "name a .csv or .json file for the predictions table, not a .wav file"),
                         (run / "best.pth", "not a .pth file"), (run / "args", "not a name without a suffix"),
                         (run / "predictions.csv", f"lies inside the run folder {run}"),
                         (notes, "exists and is not a table predict.py wrote"),
                         (empty, "exists and is not a table predict.py wrote")):
        one_line_error_here(predict.main, base + ["--out", str(out)], message)
    assert (mine / "u0.wav").read_bytes() == wav and (run / "best.pth").read_bytes() == weights
    assert notes.read_text() == "my,own\n1,2\n" and len(list(run.iterdir())) == len(list(finished.iterdir()))
    assert empty.read_text() == "[]"
    for name in ("out.csv", "out.json", "OUT.JSON"):  # a table it wrote is replaced by the next
        for _ in range(2):
            predict.main(base + ["--out", str(tmp_path / name)])
    assert pd.read_csv(tmp_path / "out.csv")["file"].tolist() == [str(mine / "u0.wav")]
    for name in ("out.json", "OUT.JSON"):
        assert json.loads((tmp_path / name).read_text())[0]["file"] == str(mine / "u0.wav")


def manifest(root, rows: list[tuple[str, str, str]]):
    """manifest.csv of (speaker, session, label) rows, a short tone each."""
    lines = ["path,emotion,speaker,session"]
    for k, (speaker, session, label) in enumerate(rows):
        voice(root / speaker / f"{k}.wav", 150 + 40 * "ab".index(label), seed=k)
        lines.append(f"{speaker}/{k}.wav,{label},{speaker},{session}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_2_a_manifest_is_split_by_speaker_whatever_its_sessions(tmp_path):
    # Sessions are recording days: ann and bob speak on two days each, cid and dan share one call.
    rows = [(s, f"{s}_day{d}", "ab"[k % 2]) for s in ("ann", "bob") for d in (1, 2) for k in range(2)]
    rows += [(s, "call", "ab"[k % 2]) for s in ("cid", "dan") for k in range(2)]
    rows += [("eve", "eve_day1", "ab"[k % 2]) for k in range(2)]
    root = manifest(tmp_path / "days", rows)
    summary = preprocess_module.preprocess(root, "tfidf", 8)
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(root)]))
    assert spec.names == ("ann", "bob", "cid+dan", "eve")
    table = pd.read_csv(root / "df_speaker.csv", keep_default_na=False)
    assert table.groupby("speaker")["Session"].nunique().max() == 1  # each speaker's days on one side
    sides = {name: {table["speaker"][i] for i in np.flatnonzero(table["Session"].isin(keys))}
             for name, keys in (("train", spec.train), ("val", spec.val), ("test", spec.test))}
    assert not (sides["train"] & sides["test"] or sides["train"] & sides["val"] or sides["val"] & sides["test"])
    assert summary["kept"]["sessions of one speaker (or of speakers who share one) split as one unit"] == [
        "ann: ann_day1, ann_day2", "bob: bob_day1, bob_day2"]
    facts = json.loads((root / "preprocess_manifest.json").read_text())["facts"]
    assert facts["split_unit"] == "speaker"
    # Every speaker on one shared day: no speaker-independent split exists, and the run says so in one line.
    linked = manifest(tmp_path / "linked", [(s, "day1" if k else f"{s}_x", "ab"[k]) for s in "pq" for k in (0, 1)])
    one_line_error_here(main_cli.main, ["--data_dir", str(linked), "--save_path", str(tmp_path / "exp")] + ONE_EPOCH,
                        "its speakers form 1 group (p+q) once the speakers of a shared session are kept together")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("text, message", [
    ("feature_norm:\n", "feature_norm: no value; give one, or delete the line"),
    ("epochs:\n", "epochs: no value"), ("lr:\n", "lr: no value"), ("batch_size:\n", "batch_size: no value"),
    ("epochs: 1.7\n", "epochs: 1.7 is not a valid value of --epochs"),
    ("epochs: true\n", "epochs: True is not a value of --epochs"),
    ("epochs: 0\n", "epochs: 0: --epochs must be >= 1"), ("lr: -1\n", "lr: -1.0: --lr must be > 0"),
    ("seeds: [0, 1]\n", "seeds: [0, 1] is not a value of --seeds; write it as on the command line")])
def test_3_a_recipe_value_passes_the_checks_of_its_flag(tmp_path, text, message):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text)
    one_line_error_here(main_cli.main, ["--recipe", str(recipe)], f"--recipe {recipe}: {message}")


def test_3_a_recipe_value_that_works_is_the_flags_and_a_flag_error_stays_the_flags(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("lr: 1e-3\nepochs: 7\nfeature_norm: training\n")  # 1e-3: a string to YAML, a float to --lr
    args = parse_args(["--recipe", str(recipe)])
    assert (args.lr, args.epochs, args.feature_norm) == (0.001, 7, "training")
    with pytest.raises(FlagError, match="^--epochs must be >= 1$"):
        parse_args(["--recipe", str(recipe), "--epochs", "0"])


def test_4_every_reader_refuses_an_unfinished_run(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "results.json").unlink()  # stopped by Ctrl-C: best.pth is the best model so far
    wav = tmp_path / "u.wav"
    voice(wav, 180)
    for cli, argv in ((predict.main, ["--run", str(run), "--wav", str(wav)]),
                      (main_cli.main, ["--test_only", str(run)]), (ensemble.main, [str(run)])):
        one_line_error_here(cli, argv, str(run))


def fake_run(folder, name: str, corpus: str = "ravdess", test_split: str = "1"):
    run = _member(folder, name, np.array([0.9, 0.2, 0.8]), np.array([0.9, 0.2, 0.1]))
    (run / "args.json").write_text(json.dumps({"test_split": test_split, "corpus": corpus, "data_dir": f"/d/{corpus}",
                                               "SorL": "speaker", "label_map": None}))
    return run


def test_5_ensemble_members_share_a_corpus_a_label_set_and_a_fold(tmp_path, capsys):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b")
    for runs, message in (([a, fake_run(tmp_path, "tess", "tess")], "tess was trained on tess (tess, --SorL speaker)"),
                          ([a, fake_run(tmp_path, "fold2", test_split="2")], "the runs share no fold"),
                          ([a, b, a], "is given twice")):
        one_line_error_here(ensemble.main, [str(r) for r in runs] + ["--save_path", str(tmp_path / "exp")], message)
    relabelled = fake_run(tmp_path, "relabelled", test_split="2")
    for file in ("predictions.csv", "predictions_val.csv"):
        table = pd.read_csv(relabelled / file)
        table.rename(columns={"b": "c"}).assign(emotion=["a", "c", "a"]).to_csv(relabelled / file, index=False)
    one_line_error_here(ensemble.main, [str(a), str(b), str(relabelled), "--save_path", str(tmp_path / "exp")],
                        "the runs' classes differ (a, b vs a, c)")
    assert not (tmp_path / "exp").exists()
    ensemble.main([str(a), "--save_path", str(tmp_path / "exp")])
    assert "the ensemble has one member: its figures are that run's own" in capsys.readouterr().out


def test_6_resume_refuses_an_ensemble_folder(tmp_path):
    folder = ensemble.run_ensemble([str(fake_run(tmp_path, "a")), str(fake_run(tmp_path, "b"))], "average",
                                   str(tmp_path / "exp"))
    summary = (folder / "summary.json").read_bytes()
    one_line_error_here(main_cli.main, ["--resume", str(folder)], "is an ensemble folder (ensemble.py)")
    assert (folder / "summary.json").read_bytes() == summary


def test_7_test_only_applies_a_test_split_or_a_corpus_copy_and_refuses_the_rest(finished, demo_dir, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    for flags, message in ((["--recipe", "published"], "--recipe cannot apply to it"),
                           (["--feature_norm", "training"], "--feature_norm cannot apply to it"),
                           (["--test_split", "1"], f"{run.name} was trained or validated on 1")):
        one_line_error_here(main_cli.main, ["--test_only", str(run)] + flags, message)
    main_cli.main(["--test_only", str(run), "--test_split", "14"])
    assert "| test [14] (run) |" in capsys.readouterr().out
    result = json.loads((run / "results_test_only.json").read_text())
    assert (result["test_split"], result["sessions"]["test"]) == ("14", [14])
    copy = shutil.copytree(demo_dir, tmp_path / "copy" / demo_dir.name)
    main_cli.main(["--test_only", str(run), "--data_dir", str(copy)])
    assert json.loads((run / "results_test_only.json").read_text())["data_dir"] == str(copy)


def test_8_fitted_imbalance_without_automatic_validation_is_refused(tmp_path):
    two = manifest(tmp_path / "two", [(s, s, "ab"[k]) for s in "pq" for k in (0, 1)])
    for fitted, experiment in (("crt", []), ("val_bias", []), ("crt", ["--cv"]), ("val_bias", ["--seeds", "0,1"])):
        one_line_error_here(main_cli.main, ["--data_dir", str(two), "--save_path", str(tmp_path / "exp"),
                                            "--imbalance", fitted] + ONE_EPOCH + experiment,
                            f"--imbalance {fitted} is fitted on the validation sessions; --val_split auto leaves none")
    assert not (tmp_path / "exp").exists()


def test_9_10_a_plan_keeps_its_recipe_values_and_a_refused_start_leaves_no_folder(demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text("".join(f"{TINY[k][2:]}: {TINY[k + 1]}\n" for k in range(0, len(TINY), 2)))
    main_cli.main(["--data_dir", str(demo_dir), "--save_path", "exp", "--recipe", "tiny.yaml", "--epochs", "1",
                   "--seeds", "0", "--plan_only"])
    plan = next((tmp_path / "exp").iterdir())
    (tmp_path / "tiny.yaml").write_text("epochs: 7\n")  # edited after planning, then gone from where it was
    moved = shutil.move(str(demo_dir.parent), str(tmp_path / "elsewhere"))
    try:  # the corpus is gone: the run is refused before its folder is made
        one_line_error_here(main_cli.main, ["--resume", str(plan)], "demo")
    finally:
        shutil.move(moved, str(demo_dir.parent))
    assert not (plan / "seed0").exists()
    (tmp_path / "tiny.yaml").unlink()
    monkeypatch.chdir(ROOT)  # another directory
    main_cli.main(["--resume", str(plan)])
    record = yaml.safe_load((plan / "seed0" / "recipe.yaml").read_text())
    assert record["epochs"] == 1 and record["hidden_size"] == 16
    assert len((plan / "seed0" / "log.jsonl").read_text().splitlines()) == 1


def test_11_12_a_cut_checkpoint_or_a_damaged_record_is_one_line(finished, tmp_path):
    wav = tmp_path / "u.wav"
    voice(wav, 180)
    for share in (0.1, 0.6):
        run = copy_run(finished, tmp_path, f"cut{share}")
        for name in ("best.pth", "checkpoint.pth"):
            data = (run / name).read_bytes()
            (run / name).write_bytes(data[:int(len(data) * share)])
        one_line_error_here(main_cli.main, ["--test_only", str(run)], "best.pth is damaged or not a checkpoint")
        one_line_error_here(predict.main, ["--run", str(run), "--wav", str(wav)], "best.pth is damaged")
        (run / "results.json").unlink()
        one_line_error_here(main_cli.main, ["--resume", str(run)], "checkpoint.pth is damaged")
    run = copy_run(finished, tmp_path, "damaged")
    (run / "corpus.json").write_text('{"data_dir": "/x", "fing')
    one_line_error_here(main_cli.main, ["--test_only", str(run)], "corpus.json is damaged (not JSON")
    one_line_error_here(predict.main, ["--run", str(run), "--wav", str(wav)], "corpus.json is damaged")
    (run / "results.json").unlink()
    (run / "checkpoint.pth").unlink()
    (run / "args.json").write_text('{"seed": ')
    one_line_error_here(main_cli.main, ["--resume", str(run)], "args.json is damaged")


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "predictions.csv").write_text(""), "predictions.csv is empty or damaged"),
    (lambda run: (run / "predictions.csv").write_text("Segment ID,emotion,a,b\nu1,a,,0.5\n"),
     "predictions.csv line 2: a probability is blank or not a number"),
    (lambda run: (run / "predictions.csv").write_text("Segment ID,emotion,a,b\nu1,joy,0.5,0.5\n"),
     "predictions.csv line 2: label 'joy' is not one of its classes (a, b)"),
    (lambda run: (run / "args.json").write_text('{"test_split": "1", "cor'), "args.json is damaged")])
def test_13_compare_and_ensemble_name_a_damaged_member(tmp_path, damage, message):
    good, bad = fake_run(tmp_path, "good"), fake_run(tmp_path, "bad")
    damage(bad)
    one_line_error_here(ensemble.main, [str(good), str(bad), "--save_path", str(tmp_path / "exp")], message)
    one_line_error_here(compare.main, [str(bad), "--versus", str(good), "--resamples", "10"], message)


def test_15_predict_standardises_each_named_speaker_by_training_s_rule(finished, tmp_path):
    folder = tmp_path / "call"
    folder.mkdir()
    for k in range(5):
        voice(folder / f"ann_{k}.wav", 150 + 10 * k, seed=k)
        voice(folder / f"bob_{k}.wav", 260 + 20 * k, seconds=0.8, seed=10 + k)
    voice(folder / "cid_0.wav", 200)
    by_speaker = predict.main(["--run", str(finished), "--input_dir", str(folder), "--speaker_pattern", "^([a-z]+)_"])
    alone = tmp_path / "ann"
    alone.mkdir()
    for wav in folder.glob("ann_*.wav"):
        shutil.copy(wav, alone)
    ann = predict.main(["--run", str(finished), "--input_dir", str(alone)])
    classes = list(ann.columns[1:ann.columns.get_loc("emotion")])
    mine = by_speaker[by_speaker["file"].str.contains("ann_")]
    np.testing.assert_allclose(mine[classes].to_numpy(), ann[classes].to_numpy(), atol=1e-6)
    notes = dict(zip(by_speaker["file"].map(lambda f: f.split("/")[-1]), by_speaker["note"]))
    assert notes["bob_3.wav"].endswith("; audio standardised with the statistics of speaker bob's 5 recordings")
    assert notes["cid_0.wav"].endswith("; audio standardised with the run's training statistics (speaker cid's "
                                       "recordings are fewer than 5)")
    pooled = predict.main(["--run", str(finished), "--input_dir", str(folder)])  # one speaker assumed, and said
    assert pooled["note"].str.contains("all the files taken as one speaker; --speaker_pattern").all()
    assert not np.allclose(pooled[pooled["file"].str.contains("ann_")][classes].to_numpy(), mine[classes].to_numpy())


def test_15_a_clip_too_short_for_its_functionals_is_named(finished, tmp_path, monkeypatch):
    assert np.isnan(predict.clip_opensmile(np.zeros(480, np.float32), "egemaps")).all()  # openSMILE on 0.03 s
    wav = tmp_path / "short.wav"
    voice(wav, 180, seconds=0.03)
    computed = predict.run_functionals
    monkeypatch.setattr(predict, "run_functionals", lambda names, audios: computed(names, audios) * np.nan)
    table = predict.main(["--run", str(finished), "--wav", str(wav)])
    assert "functionals (logmel) not computable for a 0.03-s clip: the training mean stands in" in table["note"][0]
