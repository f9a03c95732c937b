"""Image datasets (folders, .npz, the digits and Fashion-MNIST testbeds' data) and image conversion."""
