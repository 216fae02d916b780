"""Stage two: splits, vocabulary, cached-feature loading, the attention LSTM decoder, training."""
