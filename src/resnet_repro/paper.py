"""The paper's reference numbers (He et al. 2015, arXiv 1512.03385), in one place.

Errors are in percent. Rows keyed by a ModelSpec name (e.g. "resnet34-B", "plain34") are ours to
reproduce; rows keyed by another method's name are quoted from the paper for context.
"""

# Sec. 4.2: the CIFAR-10 depths of Fig. 6, Fig. 7 and Table 6 (which adds ResNet-1202).
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
# Sec. 4.2: the CIFAR-10 schedule, 64k iterations of mini-batch 128.
CIFAR_ITERATIONS, CIFAR_BATCH = 64_000, 128

# Sec. 4.2: parameters of the CIFAR-10 nets (option A; plain twins have the same), by n (depth 6n+2).
CIFAR_PARAMS = {3: 269_722, 5: 464_154, 7: 658_586, 9: 853_018, 18: 1_727_962, 200: 19_421_274}

# Table 1: multiply-adds at 224x224, x10^9. Plain-34 has the same as ResNet-34.
IMAGENET_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
IMAGENET_BLOCKS = {18: "basic [2,2,2,2]", 34: "basic [3,4,6,3]", 50: "bottleneck [3,4,6,3]",
                   101: "bottleneck [3,4,23,3]", 152: "bottleneck [3,8,36,3]"}

# Table 2: ImageNet val top-1, 10-crop testing; ResNets use option A.
TABLE2_TOP1 = {"plain18": 27.94, "plain34": 28.54, "resnet18-A": 27.88, "resnet34-A": 25.03}

# Table 3: ImageNet val, 10-crop testing: (top-1, top-5); None where the paper gives none.
TABLE3 = {
    "plain34": (28.54, 10.02),
    "resnet34-A": (25.03, 7.76),
    "resnet34-B": (24.52, 7.46),
    "resnet34-C": (24.19, 7.40),
    "resnet50-B": (22.85, 6.71),
    "resnet101-B": (21.75, 6.05),
    "resnet152-B": (21.43, 5.71),
}
TABLE3_QUOTED = {"VGG-16": (28.07, 9.33), "GoogLeNet": (None, 9.15), "PReLU-net": (24.27, 7.38)}

# Table 4: single models, multi-scale fully-convolutional testing, ImageNet val (top-1, top-5).
TABLE4 = {
    "resnet34-B": (21.84, 5.71),
    "resnet34-C": (21.53, 5.60),
    "resnet50-B": (20.74, 5.25),
    "resnet101-B": (19.87, 4.60),
    "resnet152-B": (19.38, 4.49),
}
TABLE4_QUOTED = {
    "VGG (ILSVRC'14)": (None, 8.43),
    "GoogLeNet (ILSVRC'14)": (None, 7.89),
    "VGG (v5)": (24.4, 7.1),
    "PReLU-net": (21.59, 5.71),
    "BN-inception": (21.99, 5.81),
}
TABLE4_TEST_SET = {"VGG (ILSVRC'14)"}  # the paper's †: reported on the test set, not val

# Table 5: ensembles, top-5 on the ImageNet test server.
TABLE5_TOP5 = {"ResNet (ILSVRC'15)": 3.57}
TABLE5_QUOTED = {"VGG (ILSVRC'14)": 7.32, "GoogLeNet (ILSVRC'14)": 6.66, "VGG (v5)": 6.8,
                 "PReLU-net": 4.94, "BN-inception": 4.82}

# Table 6: CIFAR-10 test error with augmentation. ResNet-110 is "best (mean±std over 5 runs)".
TABLE6 = {
    "resnet20-A": 8.75,
    "resnet32-A": 7.51,
    "resnet44-A": 7.17,
    "resnet56-A": 6.97,
    "resnet110-A": 6.43,
    "resnet1202-A": 7.93,
}
# "best (mean±std)" where the paper gives it, ours and quoted.
TABLE6_MEAN_STD = {"resnet110-A": (6.61, 0.16), "Highway (19 layers, 2.3M)": (7.72, 0.16)}
TABLE6_QUOTED = {"Maxout": 9.38, "NIN": 8.81, "DSN": 8.22, "FitNet (19 layers, 2.5M)": 8.39,
                 "Highway (19 layers, 2.3M)": 7.54, "Highway (32 layers, 1.25M)": 8.80}

# Not the paper's: the two most used CIFAR-10 ResNet reimplementations, for the pretrained-weights table.
# Both report the best test epoch (chosen on the test set), with recipes unlike the paper's; errors in %.
# akamaster/pytorch_resnet_cifar10 (README, "Test err(this impl.)"): the paper's schedule, ImageNet-style
# normalisation, no 45k/5k split.
AKAMASTER = {"resnet20-A": 8.27, "resnet32-A": 7.37, "resnet44-A": 6.90, "resnet56-A": 6.61, "resnet110-A": 6.32,
             "resnet1202-A": 6.18}
# chenyaofo/pytorch-cifar-models (README, CIFAR-10 Top-1 Acc.): 200 epochs, batch 256, Nesterov momentum.
CHENYAOFO = {"resnet20-A": 100 - 92.60, "resnet32-A": 100 - 93.53, "resnet44-A": 100 - 94.01,
             "resnet56-A": 100 - 94.37}
