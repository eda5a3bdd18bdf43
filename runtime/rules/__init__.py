"""The rules: the engine that evaluates them, its index, what actions do, what outcomes mean."""
