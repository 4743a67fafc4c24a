"""Every code example of spec/trainer_api.ko.md, as written, with imports adjusted and the micro config.

Where the spec names a file (``config/base_config.yaml``, ``data/train.csv``) the test passes the
micro config and sample data instead: nothing here can download KoBART.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

pytestmark = pytest.mark.slow


def test_constructor_and_initialize_example(micro_config_file):
    from pipeline.config import ConfigManager
    from pipeline.trainer import DialogueSummarizationTrainer

    config_manager = ConfigManager()
    config = config_manager.load_config(str(micro_config_file))

    trainer = DialogueSummarizationTrainer(config=config, sweep_mode=False, experiment_name="kobart_baseline_v1")
    trainer.initialize_components()
    assert trainer.experiment_name == "kobart_baseline_v1"
    assert trainer.output_dir.parent.name == "kobart_baseline_v1"
    assert trainer.model is not None and trainer.tokenizer is not None and trainer.trainer is not None


def test_lifecycle_examples(micro_config, sample_dir):
    """prepare_data, train, resume, evaluate, generate_predictions, properties and TrainingResult examples."""
    from transformers import AutoModel, AutoTokenizer

    from pipeline.trainer import DialogueSummarizationTrainer, TrainingResult

    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    out = io.StringIO()
    with redirect_stdout(out):
        datasets = trainer.prepare_data(
            train_path=str(sample_dir / "train.csv"),
            val_path=str(sample_dir / "dev.csv"),
            test_path=str(sample_dir / "dev.csv"),  # a labeled test split, so the test_* example can score it
        )
        print(f"Train dataset size: {len(datasets['train'])}")
        print(f"Validation dataset size: {len(datasets['validation'])}")

        result = trainer.train(datasets)
        result = trainer.train(datasets, resume_from_checkpoint="checkpoints/checkpoint-4")
        print(f"Best ROUGE Combined F1: {result.best_metrics['rouge_combined_f1']:.4f}")
        print(f"Model saved to: {result.model_path}")

        eval_results = trainer.evaluate(datasets["validation"])
        print(f"Validation ROUGE-1: {eval_results['eval_rouge1']:.4f}")
        test_results = trainer.evaluate(datasets["test"], metric_key_prefix="test")
        print(f"Test ROUGE-L: {test_results['test_rougeL']:.4f}")

        predictions = trainer.generate_predictions(datasets["test"])
        sample_predictions = trainer.generate_predictions(datasets["test"], max_samples=10)
        for i, pred in enumerate(sample_predictions[:3]):
            print(f"\n=== 예측 {i + 1} ===")
            print(f"입력: {pred['input'][:100]}...")
            print(f"예측: {pred['prediction']}")
            print(f"참조: {pred['reference']}")

        print(f"Using device: {trainer.device}")
        print(f"Model architecture: {trainer.config['model']['architecture']}")
        print(f"Experiment name: {trainer.experiment_name}")
        total_params = sum(p.numel() for p in trainer.model.parameters())
        trainable_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"Total parameters: {total_params:,}")
        print(f"Trainable parameters: {trainable_params:,}")

        print("Best Metrics:")
        for metric, value in result.best_metrics.items():
            print(f"  {metric}: {value:.4f}")
        model = AutoModel.from_pretrained(result.model_path)
        tokenizer = AutoTokenizer.from_pretrained(result.model_path)
        if result.wandb_run_id:
            print(f"WandB Run: https://wandb.ai/your-entity/your-project/runs/{result.wandb_run_id}")

    text = out.getvalue()
    assert "Train dataset size: 300" in text and "Validation dataset size: 30" in text
    assert isinstance(result, TrainingResult)
    assert {"rouge1", "rouge2", "rougeL", "rouge_combined_f1", "loss"} <= set(result.best_metrics)
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rouge_combined_f1", "eval_loss"} <= set(eval_results)
    assert {"test_rouge1", "test_rougeL", "test_rouge_combined_f1", "test_loss"} <= set(test_results)
    assert len(predictions) == 30 and len(sample_predictions) == 10
    assert set(sample_predictions[0]) == {"fname", "input", "prediction", "reference"}
    assert [p["fname"] for p in predictions] == datasets["test"]["fname"]  # split order kept
    assert result.training_history[0] == {
        "event": "resume",
        "checkpoint": str(trainer.output_dir / "checkpoints/checkpoint-4"),
    }
    assert model.config.vocab_size == len(tokenizer)
    assert trainer.model_registry.best()["model_path"] == str(trainer.output_dir.resolve() / "model")


def test_create_trainer_examples(micro_config_file, micro_config):
    from pipeline.trainer import create_trainer

    trainer = create_trainer(str(micro_config_file))
    assert trainer.trainer is not None  # "초기화된 트레이너 인스턴스": already initialized

    # The spec's dict names KoBART on the hub; a partial dict is completed with defaults either way.
    config = {
        "model": {"architecture": "bart", "checkpoint": "scratch"},
        "training": {"learning_rate": 5e-5, "per_device_train_batch_size": 16},
        "data": micro_config["data"],
        "general": micro_config["general"],
    }
    trainer = create_trainer(config)
    assert trainer.config["training"]["learning_rate"] == 5e-5
    assert trainer.config["generation"]["num_beams"] == 4  # default filled in


def test_error_handling_example(micro_config_file):
    """The spec's try/except flow: with good inputs the try block runs to the end."""
    from pipeline.trainer import create_trainer

    experiment_id = None
    trainer = None
    try:
        trainer = create_trainer(str(micro_config_file))
        trainer.initialize_components()

        datasets = trainer.prepare_data()
        result = trainer.train(datasets)
    except FileNotFoundError as e:
        pytest.fail(f"설정 파일 또는 데이터 파일을 찾을 수 없습니다: {e}")
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            trainer.config["training"]["per_device_train_batch_size"] //= 2
            result = trainer.train(datasets)
        else:
            pytest.fail(f"런타임 에러: {e}")
    except ValueError as e:
        pytest.fail(f"잘못된 설정값: {e}")
    except Exception as e:
        if hasattr(trainer, "experiment_tracker") and trainer.experiment_tracker:
            trainer.experiment_tracker.end_experiment(experiment_id=experiment_id, status="failed", notes=str(e))
        raise
    assert result.experiment_id and trainer.experiment_tracker.get(result.experiment_id)["status"] == "completed"


def test_error_handling_example_missing_file_is_filenotfounderror(micro_config, tmp_path):
    from pipeline.trainer import create_trainer

    micro_config["data"]["train_path"] = str(tmp_path / "nope" / "train.csv")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        create_trainer(micro_config)


def test_custom_callback_example(micro_config):
    import wandb
    from transformers import TrainerCallback

    from pipeline.trainer import DialogueSummarizationTrainer

    seen = []

    class CustomMetricsCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics, **kwargs):
            custom_score = metrics.get("eval_rouge1", 0) * 2
            seen.append(custom_score)
            if wandb.run:
                wandb.log({"custom_score": custom_score})

    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    trainer.trainer.add_callback(CustomMetricsCallback())
    trainer.train(trainer.prepare_data())
    assert len(seen) >= 2  # evaluations at steps 4 and 8, plus the final one


def test_dynamic_config_example(micro_config):
    from pipeline.trainer import DialogueSummarizationTrainer

    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    trainer.config["training"]["learning_rate"] = 3e-5
    trainer.config["training"]["warmup_ratio"] = 0.1

    training_args = trainer._get_training_arguments()
    trainer.trainer.args = training_args
    assert trainer.trainer.args.learning_rate == 3e-5
    assert trainer.trainer.args.warmup_steps == 0.1  # transformers 5 reads a float below 1 as a ratio


def test_checkpoint_management_example(micro_config):
    from pipeline.trainer import DialogueSummarizationTrainer

    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    trainer.train(datasets)

    checkpoint_dir = trainer.output_dir / "checkpoints"
    checkpoints = list(checkpoint_dir.glob("checkpoint-*"))
    assert checkpoints
    if checkpoints:
        latest_checkpoint = max(checkpoints, key=lambda x: int(x.name.split("-")[1]))
        result = trainer.train(datasets, resume_from_checkpoint=str(latest_checkpoint))
    assert latest_checkpoint.name == "checkpoint-8"
    assert result.training_history[0]["checkpoint"] == str(latest_checkpoint)
