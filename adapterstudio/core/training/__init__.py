"""What a fine-tune is, before any framework runs it: the spec (`spec`), the data preparation and its checks
(`data`) and the auto recipe's decisions (`recipe`). Pure Python, no torch: the CLI, the services and the GUI
read and validate these without loading the ML stack; `adapterstudio.ml.training` runs them."""
