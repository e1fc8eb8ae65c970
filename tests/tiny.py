"""The tiny run the end-to-end tests share: ResNet-18 from scratch, hidden 32, 1+2 layers, 8 queries,
64 px images, batch 4, on the CPU in the test process (seconds per epoch on the generated data)."""

TINY = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2",
    "--dim_feedforward", "64", "--num_queries", "8", "--batch_size", "4", "--num_workers", "0",
    "--train_scales", "64", "--val_size", "64", "--max_size", "64", "--device", "cpu", "--print_freq", "50",
]  # fmt: skip
