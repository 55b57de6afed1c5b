"""Data for the demo, the comparison and the notebooks.

- `load("digits")`: scikit-learn's bundled 8×8 digits, no download.
- `load("mnist")`, `load("fashion_mnist")`: through `keras.datasets`, which
  downloads them once; offline, a clear error says so.
- `navigation_queries()`: a small synthetic corpus of Chinese requests, for
  the Bi-LSTM study.
"""

import numpy as np

from tfmetric.optional import optional_import

__all__ = ["DATASETS", "load", "navigation_queries"]

DATASETS = ("digits", "mnist", "fashion_mnist")


def load(name="digits", seed=0, test_fraction=0.2, limit=None):
    """`((x_train, y_train), (x_test, y_test), image_shape)`, pixels scaled to [0, 1].

    `x` is flattened to `(n, pixels)` float32; `image_shape` gives the
    pictures back (for sprites and plots). The digits are split at random
    (`seed`, `test_fraction`); MNIST and Fashion-MNIST keep their own split.
    `limit` keeps the first examples of each split (for quick runs).
    """
    (x_train, y_train), (x_test, y_test), image_shape = _load(name, seed, test_fraction)
    if limit is not None:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    return (x_train, y_train), (x_test, y_test), image_shape


def _load(name, seed, test_fraction):
    if name == "digits":
        datasets = optional_import("sklearn.datasets", "The bundled digits")
        digits = datasets.load_digits()
        x = (digits.data / 16.0).astype("float32")
        y = digits.target.astype("int64")
        order = np.random.default_rng(seed).permutation(len(y))
        split = int(round((1 - test_fraction) * len(y)))
        train, test = order[:split], order[split:]
        return (x[train], y[train]), (x[test], y[test]), (8, 8)
    if name in ("mnist", "fashion_mnist"):
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        except Exception as error:  # urllib, SSL and socket errors all mean the same here
            raise RuntimeError(
                f"Could not load {name}: keras.datasets downloads it on first use, and that failed "
                f"({type(error).__name__}: {error}). Connect to the internet once (Keras caches it in "
                "~/.keras/datasets), or use the bundled digits: --dataset digits."
            ) from error

        def flat(images):
            return (images.reshape(len(images), -1) / 255.0).astype("float32")

        return (flat(x_train), y_train.astype("int64")), (flat(x_test), y_test.astype("int64")), (28, 28)
    raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


# Synthetic: templates × slot values, written for this package. Label 1 asks
# for directions or navigation; label 0 is any other request to an assistant.
_PLACES = [
    "安泰小区", "高铁东站", "南漳涌泉", "人民医院", "火车站", "飞机场", "中山公园", "市政府", "万达广场",
    "体育中心", "图书馆", "汽车南站", "大学城", "滨江路", "科技园", "博物馆", "动物园", "江北机场",
    "北京路", "第一中学", "长途汽车站", "会展中心", "植物园", "老城区", "解放碑", "南湖公园",
]
_NAVIGATION = [
    "导航到{}", "去{}怎么走", "我要去{}", "带我去{}", "到{}的路线", "{}在哪里", "开车去{}",
    "从这里到{}要多久", "最近的{}怎么走", "帮我导航去{}", "怎么去{}", "去{}的路",
]
_OTHER = [
    "播放{}的歌", "{}明天天气怎么样", "给{}打电话", "把{}加入收藏", "{}今天限行吗", "查一下{}的电话",
    "{}几点关门", "{}有什么好吃的", "搜索{}的新闻", "{}的门票多少钱", "提醒我明天去{}开会", "{}停车收费吗",
]
_SINGERS = ["周杰伦", "王菲", "陈奕迅", "邓紫棋", "林俊杰", "李健"]
_PEOPLE = ["妈妈", "老王", "张经理", "小李", "爸爸", "王老师"]


def navigation_queries(seed=0):
    """Synthetic Chinese assistant requests: `(texts, labels)`, 1 = navigation.

    Every navigation template and every other-request template is filled with
    every place (some other-request templates take a singer or a person
    instead), so the two classes share their vocabulary of places and differ
    in the words around them: a model has to read the request, not spot a
    place name. Shuffled with `seed`. The corpus is made up from templates;
    it stands in for the proprietary query log of the original study.
    """
    texts, labels = [], []
    for template in _NAVIGATION:
        for place in _PLACES:
            texts.append(template.format(place))
            labels.append(1)
    for template in _OTHER:
        fillers = _SINGERS if "歌" in template else _PEOPLE if "电话" in template else _PLACES
        for filler in fillers:
            texts.append(template.format(filler))
            labels.append(0)
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[index] for index in order], np.asarray(labels, "int64")[order]
