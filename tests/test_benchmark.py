import json

import benchmark


def test_quick_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "benchmark.json"
    benchmark.main_cli(["--quick", "--text_dim", "16", "--out", str(out)])
    figures = json.loads(out.read_text())
    expected = ["spectrogram_utt_per_s", "tfidf_utt_per_s", "cache_mb_per_audio_hour", "kemdy19_spectrogram_minutes",
                "loader_windows_per_s", "reference_windows_per_s", "loader_speedup", "predict_single_file_s",
                "predict_s_per_utterance", "speech_extract_utt_per_s", "speech_extract_real_time",
                "speech_extract_peak_rss_gb", "speech_kemdy19_extract_minutes", "speech_cache_mb_per_10k_utterances",
                "speech_peak_rss_gb_10s_clip", "speech_peak_rss_gb_30s_clip", "speech_peak_rss_gb_120s_clip"] + [f"{size}_{name}" for size in ("published", "recipe") for name in (
                    "train_windows_per_s", "step_ms", "seconds_per_epoch_kemdy19", "data_wait_share", "eval_windows_per_s",
                    "peak_rss_gb", "peak_rss_gb_kemdy19")]
    for key in expected:
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["utterances"] > 100 and figures["config"]["quick"] is True
    for name in ("speech_cache", "speech_encoder", "text"):  # fine-tuning steps of the tiny encoders
        for figure in ("step_s", "samples_per_s", "peak_rss_gb", "kemdy19_epoch_hours", "kemdy20_epoch_hours"):
            assert isinstance(figures[f"finetune_{name}_{figure}"], float) and figures[f"finetune_{name}_{figure}"] > 0
        assert figures[f"finetune_{name}_samples_per_s"] == figures["config"]["finetune_batch"] / \
            figures[f"finetune_{name}_step_s"]
    threads = sorted({1, figures["torch_threads"]})
    for key in [f"whisper_{p}_clip_{t}thread" for p in ("float32", "int8") for t in threads] + [
            f"whisper_float32_30s_{figures['torch_threads']}thread"]:
        assert figures[f"{key}_clips_per_s"] > 0 and figures[f"{key}_real_time"] > 0, key
    # Consistency between figures that are computed from each other:
    assert abs(figures["loader_speedup"] - figures["loader_windows_per_s"] / figures["reference_windows_per_s"]) < 1e-6
    # The tiny quick-mode wav2vec2: 3 layers x (mean, std) x 32 dims x 2 bytes per utterance.
    assert figures["speech_cache_mb_per_10k_utterances"] == 3 * 2 * 32 * 2 * 10_000 / 1e6
