"""The structure newcomers rely on: model.py a leaf, flags answered before torch is imported, recipes as files, one
training spec, and one read of checkpoint.pth per resume."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml

import options
from conftest import ROOT
from errors import FlagError
from main import main
from model import ModelConfig
from options import TrainSpec, get_parser, parse_args, read_recipe, run_arguments
from test_train import TINY
from trained_run import checkpoint_config

DATA_PATH = {"readers", "corpora", "preprocess", "dataset", "protocol", "biosignals", "speech_features",
             "text_encoder", "audio", "finetune", "trained_run", "engine", "options", "utils"}
PUBLISHED = ["--hidden_size", "512", "--num_layers", "4", "--audio_dim", "256", "--batch_size", "64", "--epochs", "100",
             "--audio_pool", "mean", "--no_direct", "--freq_mask", "0", "--time_mask", "0", "--ema", "0",
             "--patience", "0", "--av_calibration", "none", "--feature_norm", "training", "--functionals", "none"]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_model_is_a_leaf_and_flags_are_answered_before_torch():
    leaf = _python("import sys, model\nprint(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % sorted(DATA_PATH))
    assert leaf.stdout.strip() == "[]"  # model.py pulls in no reader, preprocessing, corpus or engine module
    typo = _python("import sys, main\ntry:\n    main.main(['--no_such_flag'])\nexcept SystemExit as stop:\n"
                   "    print(stop.code, 'torch' in sys.modules)")
    assert typo.stdout.strip() == "2 False"  # the typo is answered, torch never loaded
    assert typo.stderr.strip().count("\n") == 0 and "--no_such_flag" in typo.stderr  # one line, no usage dump


def test_parser_defaults_are_the_model_config_and_the_recommended_recipe():
    defaults = vars(get_parser().parse_args([]))
    config = ModelConfig.from_args(defaults)
    assert config == dataclasses.replace(ModelConfig(), text_dim=config.text_dim)
    recommended = read_recipe(get_parser(), "recommended")
    assert recommended and {k: defaults[k] for k in recommended} == recommended


def test_a_recipe_is_the_flags_it_names_and_flags_given_beat_it(tmp_path):
    by_recipe, by_flags = vars(parse_args(["--recipe", "published"])), vars(parse_args(PUBLISHED))
    made = ("recipe", "recipe_values")
    assert {k: v for k, v in by_recipe.items() if k not in made} == {k: v for k, v in by_flags.items() if k not in made}
    assert parse_args(["--recipe", "published", "--epochs", "3"]).epochs == 3
    own = tmp_path / "mine.yaml"
    own.write_text("epochs: 7\nno_direct: true\nimbalance: sampler\n")
    args = parse_args(["--recipe", str(own)])
    assert (args.epochs, args.no_direct, args.imbalance, args.hidden_size) == (7, True, "sampler", 128)
    for text, message in (("epoch: 7\n", "epoch is not a flag"), ("audio_pool: max\n", "is not one of"),
                          ("no_direct: 3\n", "is a switch"), ("epochs: many\n", "not a valid value"),
                          ("- epochs\n", "flag: value")):
        own.write_text(text)
        with pytest.raises(FlagError, match=message):
            parse_args(["--recipe", str(own)])
    with pytest.raises(FlagError, match="the recipes here are .*published.*recommended"):
        parse_args(["--recipe", "no_such_recipe"])


def test_train_spec_reads_the_imbalance_once_and_refuses_conflicts():
    spec = TrainSpec.from_args(parse_args(["--imbalance", "sampler,val_bias", "--loss", "cbloss"]))
    assert (spec.sampler, spec.val_bias, spec.logit_adjust, spec.class_weights) == (True, True, False, "cbloss")
    assert TrainSpec.from_args(parse_args(["--imbalance", "weight"])).class_weights == "inverse"
    with pytest.raises(FlagError, match="--loss cbloss and --imbalance weight"):
        parse_args(["--loss", "cbloss", "--imbalance", "weight"])
    with pytest.raises(FlagError, match="--imbalance crt,val_bias is fitted on the validation sessions"):
        parse_args(["--imbalance", "val_bias,crt", "--val_split", "none"])
    with pytest.raises(FlagError, match="--finetune_speech .* add --feature_norm training"):
        parse_args(["--speech_model", "m", "--finetune_speech"])
    assert parse_args(["--speech_model", "m", "--finetune_speech", "--feature_norm", "training"]).finetune_speech


def test_saved_runs_get_the_flags_their_code_had():
    # A main.py run saved before --feature_norm and --functionals existed trained on raw inputs; baseline.py's runs
    # (saved with --audio_features) read its default functionals already.
    network = run_arguments({"seed": 3})
    assert (network.feature_norm, network.functionals, network.seed) == ("training", "none", 3)
    # A speech model's layers were layer-normalised per utterance before --speech_norm: its config says so.
    assert network.speech_norm == "layer" and ModelConfig().speech_norm == "feature"
    saved = dataclasses.asdict(ModelConfig(speech_layers=3, speech_dim=4))
    del saved["speech_norm"], saved["fuse_logmel"]
    assert checkpoint_config({"model_config": saved}, "best.pth").speech_norm == "layer"
    baseline = run_arguments({"audio_features": None})
    assert (baseline.feature_norm, baseline.functionals) == ("training", "egemaps,logmel")


def test_resume_reads_the_checkpoint_once_and_the_recipe_travels_with_the_run(demo_dir, tmp_path, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("# a tiny model\n" + "".join(f"{TINY[k][2:]}: {TINY[k + 1]}\n" for k in range(0, len(TINY), 2)))
    main(["--data_dir", str(demo_dir), "--save_path", str(tmp_path / "exp"), "--recipe", str(recipe),
          "--epochs", "1"])
    run = next((tmp_path / "exp").iterdir())
    # the record holds the values the run used, written when they were read: the flag given beats the recipe's 2
    record = (run / options.RECIPE_COPY).read_text()
    assert yaml.safe_load(record) == {**{TINY[k][2:]: yaml.safe_load(TINY[k + 1]) for k in range(0, len(TINY), 2)},
                                      "epochs": 1}
    assert "epochs: 1  # recipe: 2" in record and str(recipe.resolve()) in record
    assert json.loads((run / "args.json").read_text())["epochs"] == 1  # the flag given beats the recipe's 2
    (run / "results.json").unlink()  # as if stopped after its first checkpoint
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    main(["--resume", str(run), "--epochs", "2"])
    assert sum(p.endswith("checkpoint.pth") for p in reads) == 1
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
