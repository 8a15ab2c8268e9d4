"""Operations: /health, /ready and /metrics, the counters behind them, the query and error logs.
"""
