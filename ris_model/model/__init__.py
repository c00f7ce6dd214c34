"""The network: RisNet with its backbones (the unrolled look pass, the reference snapshot transformer) and heads."""
