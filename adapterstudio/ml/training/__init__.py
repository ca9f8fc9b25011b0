"""The fine-tuning engine. The spec, data preparation and recipe decisions it runs live in
`adapterstudio.core.training`; heavy imports stay inside functions.

- `worker`: the Accelerate child's entry point (events, exit codes, refit's second phase);
- `finetune`: `FineTuneRecipe`, one training phase (setup, the loop, evaluation, checkpoints, export);
- `models`: base models, strategies and optimizer parameter groups;
- `encoding`: tokenizer, per-task encoding, images, collation;
- `batching`: micro-batches, token-budget passes, gradient accumulation, the class-weighted loss;
- `metrics`: loss and task metrics; `selection`: which checkpoint to export;
- `baseline` and `probe`: the frozen-feature baseline; `probe_export`: a saved probe as a head adapter;
- `evaluate`: score a trained adapter on a file, in process; `faults`: fault injection for tests."""
