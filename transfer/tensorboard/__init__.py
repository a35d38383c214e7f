"""TensorBoard: the dashboard callbacks and the event writers behind them."""
