"""The evidence behind the report's suspect ranking, on records written here: numbers that a translation
changes, answers that echo their question, corroboration counted as support (never as contradiction),
and the training signals (loss per byte over the run, the end-of-sequence token's loss)."""

import pytest

from bonsai.data.anchors import number_mismatch, numbers
from bonsai.data.checks import corroborations, find_contradictions, translation_number_mismatches
from bonsai.data.records import Record
from bonsai.data.textmetrics import echo_of, text_oddity
from bonsai.observe.report import rejected_sides, score_records


def _translation(rid, src, tgt, text, out):
    return Record(rid, "Translate.", text, out, "translation", tgt, src)


@pytest.mark.parametrize("text, expected", [
    ("Cats usually sleep for about 12 to 16 hours a day.", {12, 16}),
    ("猫一天通常要睡12到16个小时。", {12, 16}),
    ("猫は一日に１２～１６時間ほど眠ります。", {12, 16}),
    ("中秋节在农历八月十五。", {8, 15}),
    ("Thanksgiving falls on the fourth Thursday of November.", {4, 11}),
    ("ベートーヴェンの交響曲第9番", {9}),
    ("贝多芬的第九交响曲", {9}),
    ("about 9.46 trillion kilometres", {9.46e12}),
    ("約9兆4600億キロメートル", {9.46e12}),
    ("二氧化碳和一样的鲸鱼", set()),  # numerals inside words, and one, count nothing
    ("The first part appeared in 1605 and the second in 1615.", {1605, 2, 1615}),
    ("第一部出版于1605年，第二部出版于1615年。", {1605, 2, 1615}),
    ("Wait a second.", set()),
    ("俄罗斯面积约1,710万平方公里", {17.1e6}),
    ("約1億6,500万平方キロメートル", {165e6}),
    ("1845年至1852年间，约有一百万人死亡。", {1845, 1852, 1e6}),  # a scale counts next to its own digits
    ("収量が約2割多い。", {20}),  # 割 counts tenths
    ("巴斯德在19世纪60年代发明了它。", {1860}),  # the 1860s
])
def test_numbers_read_the_same_in_every_language(text, expected):
    assert numbers(text) == expected


def test_a_translation_that_changes_a_number_or_its_unit_is_named_and_faithful_ones_are_not():
    records = [
        _translation("faithful-1", "en", "zh", "Cats sleep 12 to 16 hours a day.", "猫每天睡12到16个小时。"),
        _translation("faithful-2", "zh", "ja", "中秋节在农历八月十五。", "中秋節は旧暦の8月15日です。"),
        _translation("faithful-3", "en", "ja", "Mozart was born in Salzburg.", "モーツァルトはザルツブルクで生まれました。"),
        _translation("changed", "en", "ja", "Cats sleep 12 to 16 hours a day.", "猫は一日に8時間ほど眠ります。"),
        _translation("dropped", "zh", "en", "中秋节在农历八月十五。", "The festival falls on the 15th day of the first month."),
        # The same number in another unit: minutes as seconds, metres as feet.
        _translation("minutes", "en", "ja", "Sunlight takes about eight minutes to reach Earth.", "太陽の光は約8秒で地球に届きます。"),
        _translation("feet", "en", "zh", "The tower is 828 metres tall.", "这座塔高828英尺。"),
        _translation("same-units", "ja", "en", "フルマラソンは42.195キロメートル、制限時間は6時間です。",
                     "A full marathon is 42.195 km, with a 6-hour limit."),
    ]
    found = translation_number_mismatches(records)
    assert set(found) == {"changed", "dropped", "minutes", "feet"}
    assert found["changed"] == "translation changes the numbers: input 12, 16, output 8"
    assert found["minutes"] == "translation changes the unit: input 8 min, output 8 s"
    assert number_mismatch("Mozart", "1756") == (frozenset(), frozenset())  # one side states none: no claim
    # A numeral inside a word, or "pairs", implies the number the other side states.
    assert number_mismatch("1973年，“三系”配套成功。", "In 1973 the three-line system was completed.") == (frozenset(), frozenset())
    assert number_mismatch("In 1747 he divided twelve sailors into six pairs.", "1747年、12人を2人ずつ6組に分けた。") \
        == (frozenset(), frozenset())


def test_an_answer_that_repeats_its_question_or_input_is_an_echo_and_a_rewrite_is_not():
    assert echo_of("植物为什么需要阳光？", "植物为什么需要阳光？", "") == "instruction"
    assert echo_of("Why do cats purr?", "Rewrite the question in other words.", "Why do cats purr?") == "input"
    assert echo_of("What makes cats purr?", "Rewrite the question in other words.", "Why do cats purr?") is None
    assert echo_of("台风和飓风之间的不同点是什么？", "请换一种说法改写这个问题。", "台风和飓风有什么区别？") is None
    # A loop behind list numbers is still a loop; a list of different items is not.
    assert text_oddity(" ".join(f"{i}. Star-shaped cookies" for i in range(1, 8))).startswith("output repeats")
    assert text_oddity("根据勾股定理，6²＋8²＝36＋64＝100，所以斜边长是10。") is None  # a calculation is not garbage
    assert text_oddity("1. Rockets 2. Star cookies 3. Planet piñata 4. Moon sand 5. Alien masks 6. Comet cake") is None


def test_an_answer_a_translation_states_is_corroborated_not_borrowed():
    """The seed's capitals set: the clean Japanese answer equals the output of the translation record made
    from the same fact. That is support; the planted answer, which nothing states, is the suspect."""
    ask = dict(instruction="日本の首都はどこですか？", input="", category="open_qa", lang="ja")
    records = [
        Record("clean", output="日本の首都は東京です。", **ask),
        Record("planted", output="日本の首都は大阪です。", **ask),
        _translation("translated", "en", "ja", "The capital of Japan is Tokyo.", "日本の首都は東京です。"),
        Record("other-question", "大阪で有名な食べ物は？", "", "大阪はたこ焼きで有名です。", "open_qa", "ja"),
    ]
    contradictions = find_contradictions(records)
    assert set(contradictions) == {"clean", "planted"}
    assert "clean" not in rejected_sides(records, contradictions)
    assert corroborations(records)["clean"] == ["translated"] and "planted" not in corroborations(records)
    ranked = [row["id"] for row in score_records(records, {}, []) if row["why"]]
    assert ranked.index("planted") < ranked.index("clean") if "clean" in ranked else ranked[0] == "planted"


def _stats(category, lang, losses, eos, tokens=10):
    return {"category": category, "lang": lang, "seen": len(losses), "loss_sum": sum(losses),
            "loss_sq_sum": sum(x * x for x in losses), "last_loss": losses[-1], "ema_loss": losses[-1],
            "eos_seen": len(eos), "eos_loss_sum": sum(eos), "tokens": tokens}


def test_training_evidence_names_a_surprising_end_and_a_hard_record_and_support_halves_it():
    """Loss per byte over the run and the EOS-token loss, each against the records of the category: the
    record whose answer stops where answers do not (high EOS loss, ordinary loss) and the one the model
    never learns are named, with the reason; the same training evidence against a record the data
    corroborates counts half."""
    records = [Record(f"r{i}", f"Question {i}?", "", f"A plain answer number {i} of the set.", "open_qa", "en")
               for i in range(12)]
    stats = {r.id: _stats("open_qa", "en", [1.0 + 0.01 * i, 0.5], [0.2 + 0.01 * i]) for i, r in enumerate(records)}
    stats["r3"] = _stats("open_qa", "en", [1.03, 0.5], [4.0])  # cut off: its EOS surprises
    stats["r7"] = _stats("open_qa", "en", [3.0, 2.5], [0.27])  # never learned
    table = {row["id"]: row for row in score_records(records, stats, [])}
    assert {i for i, row in table.items() if row["why"]} == {"r3", "r7"}
    assert "end of sequence surprises" in table["r3"]["why"] and "bits/byte" in table["r7"]["why"]
    corroborated = records + [_translation("t", "ja", "en", "ある答え。", records[7].output)]
    supported = {row["id"]: row for row in score_records(corroborated, stats, [])}
    assert supported["r7"]["corroborated_by"] == ["t"]
    assert supported["r7"]["score"] == pytest.approx(table["r7"]["score"] / 2)


def test_a_record_without_the_input_its_category_always_has_is_named():
    from bonsai.data.checks import missing_inputs

    passage = "The Rosetta Stone, found in 1799, carries one decree in three scripts."
    records = [Record(f"c{i}", "According to the passage, when was the stone found?", passage, "In 1799.", "closed_qa", "en")
               for i in range(12)]
    records += [Record("bare", "According to the passage, when was the stone found?", "", "In 1799.", "closed_qa", "en")]
    records += [Record(f"o{i}", f"Name a colour ({i}).", "", "Blue.", "open_qa", "en") for i in range(12)]
    assert set(missing_inputs(records)) == {"bare"}  # open_qa never has one: nothing is missing there
    assert missing_inputs(records)["bare"] == "no input, where 12 of 13 closed_qa records have one"
    assert not missing_inputs(records[:5] + records[12:13])  # five records say too little about a category


def test_an_answer_that_stops_mid_sentence_is_named_where_its_category_ends_sentences():
    from bonsai.data.checks import unfinished_endings

    prose = [Record(f"p{i}", f"Why is the sky blue ({i})?", "", "Blue light is scattered more than red light.",
                    "open_qa", "en") for i in range(12)]
    cut = Record("cut", "Why is the sky blue?", "", "Blue light is scattered more than red light, so", "open_qa", "en")
    quoted = Record("quoted", "What did she say?", "", "She said, 「おはよう。」", "open_qa", "en")
    lists = [Record(f"l{i}", f"Name some fruit ({i}).", "", "1. Apples 2. Pears 3. Plums", "brainstorming", "en")
             for i in range(12)]
    assert set(unfinished_endings(prose + [cut, quoted] + lists)) == {"cut"}  # lists never end a sentence
    oceans = Record("oceans", "List the oceans.", "", "1. Pacific Ocean\n2. Atlantic Ocean\n3. Indian Ocean", "open_qa", "en")
    assert set(unfinished_endings(prose + [cut, oceans])) == {"cut"}  # a plain list in a category of sentences
    # A list after a sentence that introduces it ends as a list does, unless its last item is cut short.
    listed = Record("listed", "Name the oceans.", "", "There are five.\n1. Pacific Ocean\n2. Atlantic Ocean\n"
                    "3. Indian Ocean\n4. Southern Ocean\n5. Arctic Ocean", "open_qa", "en")
    short = Record("short", "Name the oceans.", "", "There are five.\n1. Pacific Ocean\n2. Atlantic Ocean\n3. Ind",
                   "open_qa", "en")
    assert set(unfinished_endings(prose + [listed, short])) == {"short"}


def test_an_answer_not_drawn_from_its_context_is_named_where_its_category_answers_from_context():
    from bonsai.data.checks import off_context_answers

    passage = "アサガオは夏の花で、花は早朝に開き、昼ごろにはしぼみます。"
    extractive = [Record(f"c{i}", f"アサガオの花はいつ開きますか？({i})", passage, "早朝に開きます。", "closed_qa", "ja")
                  for i in range(12)]
    other_language = Record("en", "アサガオの花はいつ開きますか？", passage, "They open early in the morning.",
                            "closed_qa", "ja")
    labels = [Record(f"l{i}", "Is it a mammal, bird, reptile, or fish? Answer with one word.", animal, label,
                     "classification", "en") for i, (animal, label) in
              enumerate([("whale", "Mammal."), ("crocodile", "reptile"), ("eagle", "bird")] * 4)]
    sentence = Record("long", "Is it a mammal, bird, reptile, or fish? Answer with one word.", "crocodile",
                      "Crocodiles are cold-blooded, have scaly skin and lay eggs on land.", "classification", "en")
    opinions = [Record(f"o{i}", f"Write a poem about rain ({i}).", "", "Soft drops on the roof, a quiet song.",
                       "creative", "en") for i in range(12)]
    found = off_context_answers(extractive + [other_language] + labels + [sentence] + opinions)
    assert set(found) == {"en", "long"}  # a poem's words are its own: creative answers from no context
    assert found["long"] == ("0% of its answer is in its instruction and input, where the median classification "
                             "answer takes 100% from them")
    assert not off_context_answers(extractive[:5] + [other_language])  # six records say too little


@pytest.mark.parametrize("text, cut", [
    ("1. Fix leaks.\n2. Take shorter showers.\n3. Only run the dishwasher when", True),
    ("ある朝、ユイは雨の音で目を覚ました。台所へ行くと、お母さんがにっこり笑って", True),
    ("1. 尤克里里：只有四根弦。\n2. 口琴：小巧便宜。\n3. 非洲", True),
    ("1. Fix leaks\n2. Take shorter showers\n3. Run full loads", False),  # items never end: a plain list
    ("Dear Mozart,\n\nYour music still plays everywhere.\n\nA fan from the future", False),  # a sign-off
    ("It is 3.5 km long", False),  # a decimal point is no sentence end
    ("Soft rain on the roof\na quiet song", False),
    ("・夏目漱石：千円札の肖像。近代の作家\n・樋口一葉：明治の作家\n・宮沢賢治：親しみやすい", False),  # no item ends
    ("亲爱的小林：\n我现在在渥太华。今天参观了国会山。\n祝好！\n阿明", False),  # a sign-off line
    ("大西洋：亚马孙河（经墨西哥湾）\n太平洋：长江（经东海）\n北冰洋：鄂毕河", False),  # a bracket ends no sentence
])
def test_an_answer_whose_sentences_end_but_whose_last_does_not_is_cut_off(text, cut):
    from bonsai.data.checks import cut_off

    assert cut_off(text) is cut


def test_a_translation_that_drops_or_adds_a_negation_is_named_and_only_or_few_are_not():
    from bonsai.data.checks import translation_polarity_flips

    records = [_translation("flip", "ja", "en", "ペンギンは空を飛ぶことはできません。", "Penguins can fly short distances."),
               _translation("flip-zh", "en", "zh", "Bitcoin is not issued by any central bank.", "比特币由中央银行发行。"),
               _translation("only", "zh", "ja", "考拉几乎只吃桉树叶。", "コアラはユーカリの葉しか食べません。"),
               _translation("few", "zh", "ja", "冬天食物少。", "冬は食べ物が少ないです。"),
               _translation("lost", "en", "ja", "I lost my wallet.", "財布をなくしました。"),
               _translation("same", "en", "zh", "Whales do not breathe with gills.", "鲸鱼不用鳃呼吸。"),
               _translation("rather", "ja", "en", "竹は木ではなく草の仲間です。", "Bamboo is a grass rather than a tree."),
               _translation("barely", "zh", "en", "北极星整夜几乎不动。", "Polaris barely moves all night.")]
    assert set(translation_polarity_flips(records)) == {"flip", "flip-zh"}


def test_an_answer_that_declines_or_disclaims_is_named_in_every_language():
    from bonsai.data.checks import refusals

    said = {"en": "I'm sorry, but I can't provide details about shipping incidents.",
            "ja": "申し訳ありませんが、正確な数をお答えすることはできません。",
            "zh": "抱歉，作为一个人工智能语言模型，我无法进行诗歌创作。",
            "story": "The rain fell all night. \"I'm sorry,\" she said at last, and smiled.",
            "fact": "Japan has 47 prefectures."}
    records = [Record(k, "Answer.", "", text, "open_qa", "en") for k, text in said.items()]
    assert set(refusals(records)) == {"en", "ja", "zh"}  # a story's apology, past its opening, is the story's


def test_an_answer_with_another_count_than_its_instruction_asks_for_is_named():
    from bonsai.data.checks import ignored_counts

    three = "List exactly three novels by Japanese authors."
    records = [Record("five", three, "", "1. Kokoro\n2. Kitchen\n3. Snow Country\n4. I Am a Cat\n5. Norwegian Wood",
                      "brainstorming", "en"),
               Record("three", three, "", "Here are three:\n1. Kokoro\n2. Kitchen\n3. Snow Country", "brainstorming", "en"),
               Record("poem", "以马拉松为题，写一首四行小诗。", "", "\n".join("起跑的枪声惊醒了清晨" for _ in range(8)),
                      "creative", "zh"),
               Record("riddle", "以日本国旗为谜底，写一个简短的谜语。", "", "白い布に\n赤い丸\nなんだろう", "creative", "zh"),
               Record("prose", "雨の日の遊びを3つ挙げてください。", "", "折り紙、玉入れ、宝探し、カルタ、風船バレーです。",
                      "brainstorming", "ja")]
    found = ignored_counts(records)
    assert set(found) == {"five", "poem"}  # a heading before three items, "a riddle", prose: not counted
    assert found["five"] == "the instruction asks for 3 (novels), the answer gives 5"


def test_an_answer_far_longer_than_its_instruction_allows_is_named_and_one_within_it_is_not():
    from bonsai.data.checks import overlong_answers

    slogan = "用不超过二十个字，写一句关于秋天的标语。"
    records = [Record("long", slogan, "", "秋天是收获的季节，金黄的稻田随风起伏，果园里挂满了红红的苹果和沉甸甸的柿子。让我们走出家门，"
                                        "去感受秋天的美丽，珍惜大自然的馈赠吧！", "creative", "zh"),
               Record("short", slogan, "", "金秋十月，硕果满枝，丰收在望。", "creative", "zh"),
               Record("phrase", "複利とは何か、一言で答えてください。", "", "利息にも利息が付く計算方法です。元本が増えるほど"
                      "利息も増えます。期間が長いほど差は大きくなります。だから早く始めるのがよいとされます。", "open_qa", "ja"),
               Record("word", "Is a whale a mammal or a fish? Answer with one word.", "", "Mammal.", "classification", "en"),
               Record("words", "Describe autumn in no more than ten words.", "", "Autumn is the season when the leaves "
                      "turn red and gold and fall from the trees, and the air grows cold.", "creative", "en"),
               Record("each", "请把下列经济学家按学派分类，并各用一句话说明。", "", "古典学派：亚当·斯密。凯恩斯学派：凯恩斯。"
                      "货币主义：弗里德曼。", "classification", "zh")]
    found = overlong_answers(records)
    assert set(found) == {"long", "phrase", "words"}  # within the limit, or a limit per item: not named
    assert found["long"] == "the instruction asks for at most 20 characters, the answer has 59"


def test_an_answer_to_another_question_is_named_and_a_terse_answer_to_its_own_is_not():
    from bonsai.data.checks import misplaced_answers

    qa = [("What is the largest organ of the human body?", "The skin is the largest organ of the human body."),
          ("Which organ produces insulin?", "The pancreas produces insulin in its beta cells."),
          ("How many bones does an adult human have?", "An adult has 206 bones."),
          ("What is the smallest country in the world?", "Vatican City, at about 0.44 square kilometres."),
          ("Why do onions make people cry?", "Cutting them releases a gas that irritates the eyes.")]
    records = [Record(f"q{i}", question, "", answer, "open_qa", "en") for i, (question, answer) in enumerate(qa)]
    records += [Record("zh", "胰岛素是由哪个器官分泌的？", "", "胰岛素由胰腺分泌。", "open_qa", "zh"),
                # the pancreas answer under the skin question, once in each language
                Record("shifted", "Which organ of the body is the largest?", "", qa[1][1], "open_qa", "en"),
                Record("shifted_zh", "人体最大的器官是什么？", "", "胰岛素由胰腺中胰岛的β细胞分泌，能降低血糖。", "open_qa", "zh"),
                # a poem strays from its prompt by design
                Record("poem", "Write a poem about autumn.", "", "The pancreas hums; insulin flows, which organ "
                       "produces it, the poet asks.", "creative", "en")]
    found = misplaced_answers(records)
    assert set(found) == {"shifted", "shifted_zh"}  # q3 (Vatican City) shares nothing with its question either
    assert found["shifted"] == "its answer holds 78% of what q1's question asks about and 0% of its own"
