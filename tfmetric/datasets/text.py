"""Text corpora for the Bi-LSTM study (notebook 03)."""

import collections
import importlib.util
import pathlib

import numpy as np

__all__ = ["assistant_intents", "chatterbot_chinese", "navigation_queries"]


# Synthetic: templates × slot values, written for this package. Label 1 asks
# for directions or navigation; label 0 is any other request to an assistant.
_PLACES = (
    "安泰小区 高铁东站 南漳涌泉 人民医院 火车站 飞机场 中山公园 市政府 万达广场 体育中心 图书馆 汽车南站 "
    "大学城 滨江路 科技园 博物馆 动物园 江北机场 北京路 第一中学 长途汽车站 会展中心 植物园 老城区 解放碑 "
    "南湖公园"
).split()
_NAVIGATION = (
    "导航到{} 去{}怎么走 我要去{} 带我去{} 到{}的路线 {}在哪里 开车去{} 从这里到{}要多久 最近的{}怎么走 "
    "帮我导航去{} 怎么去{} 去{}的路"
).split()
_OTHER = (
    "播放{}的歌 {}明天天气怎么样 给{}打电话 把{}加入收藏 {}今天限行吗 查一下{}的电话 {}几点关门 {}有什么好吃的 "
    "搜索{}的新闻 {}的门票多少钱 提醒我明天去{}开会 {}停车收费吗"
).split()
_SINGERS = ("周杰伦 王菲 陈奕迅 邓紫棋 林俊杰 李健").split()
_PEOPLE = ("妈妈 老王 张经理 小李 爸爸 王老师").split()


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


# Synthetic, harder: eight intents whose templates share the places, the times
# and words such as 去/到/附近/明天, some on purpose in another intent's words
# (a weather question about the way to a place, a reminder to make a call).
_INTENTS = (
    "navigation",
    "weather",
    "call",
    "music",
    "reminder",
    "opening hours and tickets",
    "traffic restrictions",
    "parking",
)
_TIMES = ["明天", "今天", "今晚", "周末", "下午", "早上", "后天", "现在"]
_INTENT_TEMPLATES = (
    (
        "导航到{place} {time}去{place}怎么走 带我去{place} 去{place}的路线 从{place}到{other}怎么走 "
        "开车去{place}要多久 附近的{place}在哪 帮我规划去{place}的路线 我想去{place}走哪条路 去{place}避开拥堵 "
        "到{place}最快的路 {time}送我到{place} 去{place}走高速吗 {place}离这里多远 "
        "明天去{place}的路上堵不堵 {place}怎么过去 坐地铁到{place}在哪站下 {time}从{place}出发去{other} "
        "走路去{place}多远 {place}的停车场怎么进去 去{place}换条路 {place}开车怎么绕过去"
    ).split(),
    (
        "{time}{place}天气怎么样 {place}{time}会下雨吗 {time}去{place}的路上天气怎么样 {time}去{place}要带伞吗 "
        "{place}附近{time}气温多少 {place}{time}刮风吗 去{place}玩{time}天气好吗 {time}{place}热不热 "
        "{place}那边{time}下雪吗 到{place}的时候会下雨吗 查一下{place}{time}的天气 {time}在{place}冷不冷 "
        "{time}去{place}开车会不会结冰 {place}{time}适合出门吗 {time}{place}空气质量怎么样 "
        "去{place}停车的时候会下雨吗 {place}{time}有雾吗 {time}{place}紫外线强吗 {place}这周末天气"
    ).split(),
    (
        "给{place}打电话 打电话给{person} 拨打{place}的电话 帮我打给{place} 给{person}打电话说我去{place} "
        "呼叫{place} 联系一下{place}的前台 给{place}的{person}打个电话 {time}打给{person} 接通{place} "
        "打{place}的服务电话 给{person}回个电话 "
        "帮我联系{place} 打给{place}问问几点关门 {place}的电话多少帮我拨过去 给{person}打电话说{time}去{place} "
        "打电话问{place}能不能停车 拨给{person} 打给{place}订票"
    ).split(),
    (
        "播放{singer}的歌 去{place}的路上放点{singer}的歌 来一首{singer}的歌 我想听{singer} "
        "播放关于{place}的歌 {time}在{place}听{singer} 放一首{singer}的新歌 随便放点音乐 "
        "开车去{place}的时候放{singer} 播放{singer}的{place}演唱会 单曲循环{singer} 换一首{singer}的歌 "
        "{time}去{place}的路上听点歌 放一首跟{place}有关的歌 播放{singer}唱的{place} 打开音乐 "
        "来点适合开车去{place}的歌 放{singer}的天气之子 我想听下雨天的歌"
    ).split(),
    (
        "提醒我{time}去{place} {time}提醒我给{person}打电话 设个{time}去{place}的提醒 "
        "别让我忘了{time}去{place} {time}八点提醒我出发去{place} 记得提醒我去{place}接{person} "
        "{time}提醒我查{place}的天气 到{place}的时候提醒我 {time}提醒我去{place}停车 "
        "提醒{person}{time}去{place} {time}叫我去{place}开会 "
        "{time}提醒我去{place}买票 {time}提醒我{place}几点关门 提醒我{time}给{place}打电话 "
        "{time}去{place}前提醒我带伞 提醒我{time}挪车 提醒我明天{place}限行 提醒我去{place}的路上听歌"
    ).split(),
    (
        "{place}几点关门 {place}{time}开门吗 {place}的门票多少钱 去{place}要买票吗 {place}{time}营业到几点 "
        "{place}周末开放吗 查一下{place}的开放时间 {place}门票在哪买 {time}去{place}要预约吗 "
        "{place}学生票多少钱 {place}{time}几点开门 {place}还能进去吗 "
        "{place}{time}还卖票吗 {place}几点停止入场 去{place}的门票能网上买吗 {place}{time}人多吗 "
        "{place}节假日开放吗 {place}夜场几点开始 {place}的年卡多少钱"
    ).split(),
    (
        "{place}{time}限行吗 {time}去{place}限号吗 {place}附近限行尾号是多少 开车去{place}{time}限行吗 "
        "外地车能进{place}吗 {place}周边有交通管制吗 {time}{place}单双号吗 去{place}的路{time}封路吗 "
        "{place}那边货车能走吗 {time}到{place}会被拍吗 "
        "{time}{place}尾号限行几号 去{place}的路上限行吗 {time}开车到{place}会不会违章 {place}附近禁止左转吗 "
        "{place}{time}有没有交通管制 {place}今天限号几号 外地牌照{time}能去{place}吗"
    ).split(),
    (
        "{place}停车收费吗 {place}附近有停车场吗 去{place}好停车吗 {place}停车多少钱一小时 "
        "{time}在{place}停车方便吗 帮我找{place}附近的车位 开车去{place}停哪里 {place}地下车库还有位吗 "
        "{time}去{place}能停车吗 {place}附近哪里免费停车 "
        "{place}的停车场几点关门 去{place}停车要预约吗 {time}去{place}车停哪 {place}停车场怎么收费 "
        "{place}附近停车场还有空位吗 {time}在{place}停一晚多少钱 {place}门口能停车吗"
    ).split(),
)
# Typos a pinyin keyboard makes: a character for one that sounds the same,
# some of them another intent's word (播放/拨打, 听/停, 提醒/限行, 天气/汽车).
_HOMOPHONES = dict(
    pair.split(":")
    for pair in (
        "导:到倒 航:行 路:陆录 天:添 气:汽器 雨:语 话:化画 电:店点 打:大达 播:拨 拨:播 放:方房 歌:哥个 听:厅停 "
        "停:亭听 提:题体 醒:行省 门:们 票:漂 开:凯 关:馆观 限:现线 行:型醒 号:好 车:扯 场:厂常 费:非 去:区 到:道 "
        "怎:咋 么:吗 走:奏 明:名 冷:愣 热:惹 几:机 点:店 在:再 吗:嘛"
    ).split()
)


def assistant_intents(seed=0, examples_per_intent=80, typo_rate=0.15):
    """Synthetic Chinese requests to an assistant, eight intents that share their words.

    The intents: navigation, weather, calling, music, reminders,
    opening hours and tickets, traffic restrictions, parking. Each has 17–22
    templates filled with the same places, times, people and singers, so a
    place or 去/到/明天/附近 says nothing about the intent; some templates
    are written in another intent's words ("明天去{place}的路上天气怎么样" is
    weather, "明天提醒我给妈妈打电话" a reminder).

    `examples_per_intent` distinct fillings are drawn per intent (8 × 80 =
    640 texts by default), then each character is, with probability
    `typo_rate`, replaced by a homophone a pinyin keyboard would offer (for
    the characters that have one in a small table) or else dropped. A typo
    that would make a text equal to another keeps the clean text, so every
    text is distinct. The same `seed` gives the same corpus; `typo_rate=0`
    gives the same texts without typos, in the same order. The corpus is
    made up from templates, for this package.

    Returns:
        `(texts, labels, intent_names)`: a list of strings, int64 labels
        indexing `intent_names` (a tuple), shuffled.

    Example:

    >>> texts, labels, names = assistant_intents(examples_per_intent=20)
    >>> len(texts), len(names), labels.dtype
    (160, 8, dtype('int64'))
    """
    if not 0.0 <= typo_rate < 1.0:
        raise ValueError(f"typo_rate must be in [0, 1); received {typo_rate}.")
    fill_rng, typo_rng = (np.random.default_rng([seed, stream]) for stream in range(2))
    clean, labels = [], []
    for label, templates in enumerate(_INTENT_TEMPLATES):
        fillings = sorted({_fill(template, fill_rng) for template in templates for _ in range(60)})
        chosen = fill_rng.permutation(len(fillings))[:examples_per_intent]
        clean += [fillings[index] for index in chosen]
        labels += [label] * len(chosen)
    order = fill_rng.permutation(len(clean))
    clean, labels = [clean[index] for index in order], np.asarray(labels, "int64")[order]
    texts, seen = [], set(clean)
    for text in clean:
        noisy = _typos(text, typo_rate, typo_rng)
        if noisy != text and noisy not in seen:
            seen.add(noisy)
            text = noisy
        texts.append(text)
    return texts, labels, _INTENTS


def _fill(template, rng):
    place, other = rng.choice(_PLACES, 2, replace=False)
    return template.format(
        place=place, other=other, time=rng.choice(_TIMES), person=rng.choice(_PEOPLE), singer=rng.choice(_SINGERS)
    )


def _typos(text, rate, rng):
    kept = []
    for character, draw, pick in zip(text, rng.random(len(text)), rng.random(len(text))):
        if draw >= rate:
            kept.append(character)
        elif character in _HOMOPHONES:
            kept.append(_HOMOPHONES[character][int(pick * len(_HOMOPHONES[character]))])
    return "".join(kept) or text


def chatterbot_chinese(path=None):
    """Real Chinese chit-chat: the first line of each ChatterBot conversation, labelled by topic.

    Reads `data/chinese/*.yml` of the `chatterbot-corpus` package (BSD-3;
    `pip install --no-deps chatterbot-corpus pyyaml`): 467 conversations in
    17 topic files (AI, emotion, food, humor, money, psychology, ...). Each
    conversation's first line is an example, its file's (first) category the
    label. The corpus is real but small and noisy: some lines are one word,
    some topics overlap ("你疯了" is filed under both emotion and psychology).

    So that a held-out line is never a copy of a training line: a line
    repeated within one category is kept once; a line filed under several
    categories is dropped (its label is a coin toss); a category left with
    fewer than 2 lines is dropped (it could not be both trained on and
    retrieved). The installed corpus keeps 365 lines in 17 categories.

    Args:
        path: A directory of such `.yml` files; default the installed
            package's `data/chinese`.

    Returns:
        `(texts, labels, category_names)`: the lines in file order (files
        sorted by name), int64 labels indexing `category_names`, a tuple of
        the kept categories sorted by name.

    Raises:
        ImportError: without PyYAML, or without `chatterbot-corpus` when no
            `path` is given.
        FileNotFoundError: when the directory holds no `.yml` file.
    """
    try:
        import yaml
    except ImportError as error:
        raise ImportError("Reading the ChatterBot corpus needs PyYAML: pip install pyyaml.") from error
    directory = pathlib.Path(path) if path is not None else _chatterbot_chinese_directory()
    files = sorted(directory.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"No .yml files in {directory}.")
    categories_of = {}
    for file in files:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
        category = str(document["categories"][0])
        for conversation in document["conversations"]:
            categories_of.setdefault(str(conversation[0]).strip(), set()).add(category)
    unambiguous = {text: categories.pop() for text, categories in categories_of.items() if len(categories) == 1}
    sizes = collections.Counter(unambiguous.values())
    names = tuple(sorted(category for category, size in sizes.items() if size >= 2))
    kept = [(text, category) for text, category in unambiguous.items() if category in names]
    labels = np.asarray([names.index(category) for _, category in kept], "int64")
    return [text for text, _ in kept], labels, names


def _chatterbot_chinese_directory():
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        raise ImportError(
            "The ChatterBot corpus is not installed: pip install --no-deps chatterbot-corpus "
            "(BSD-3; 467 short Chinese conversations in 17 topics, small and noisy)."
        )
    return pathlib.Path(spec.submodule_search_locations[0]) / "data" / "chinese"
