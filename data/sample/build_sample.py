"""Regenerates the shipped sample shards from the hand-written tables below.

    python data/sample/build_sample.py

Every category appears in Japanese, English and Chinese; translation records go ja->en, en->ja,
and to and from zh. Records are interleaved across shards so each shard mixes tasks and languages.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
NUM_SHARDS = 3

# country: (en name, en capital, ja name, ja capital, zh name, zh capital)
CAPITALS = [
    ("Japan", "Tokyo", "日本", "東京", "日本", "东京"),
    ("France", "Paris", "フランス", "パリ", "法国", "巴黎"),
    ("Germany", "Berlin", "ドイツ", "ベルリン", "德国", "柏林"),
    ("Italy", "Rome", "イタリア", "ローマ", "意大利", "罗马"),
    ("Spain", "Madrid", "スペイン", "マドリード", "西班牙", "马德里"),
    ("the United Kingdom", "London", "イギリス", "ロンドン", "英国", "伦敦"),
    ("China", "Beijing", "中国", "北京", "中国", "北京"),
    ("South Korea", "Seoul", "韓国", "ソウル", "韩国", "首尔"),
    ("Canada", "Ottawa", "カナダ", "オタワ", "加拿大", "渥太华"),
    ("Australia", "Canberra", "オーストラリア", "キャンベラ", "澳大利亚", "堪培拉"),
    ("Brazil", "Brasília", "ブラジル", "ブラジリア", "巴西", "巴西利亚"),
    ("Egypt", "Cairo", "エジプト", "カイロ", "埃及", "开罗"),
    ("India", "New Delhi", "インド", "ニューデリー", "印度", "新德里"),
    ("Thailand", "Bangkok", "タイ", "バンコク", "泰国", "曼谷"),
    ("Russia", "Moscow", "ロシア", "モスクワ", "俄罗斯", "莫斯科"),
    ("Mexico", "Mexico City", "メキシコ", "メキシコシティ", "墨西哥", "墨西哥城"),
    ("Kenya", "Nairobi", "ケニア", "ナイロビ", "肯尼亚", "内罗毕"),
    ("Vietnam", "Hanoi", "ベトナム", "ハノイ", "越南", "河内"),
]

# (en question, en answer, ja question, ja answer, zh question, zh answer)
OPEN_QA = [
    ("What is the highest mountain in Japan?", "The highest mountain in Japan is Mount Fuji, at 3,776 metres.",
     "日本で一番高い山は何ですか？", "日本で一番高い山は富士山で、標高は3,776メートルです。",
     "日本最高的山是什么？", "日本最高的山是富士山，海拔3776米。"),
    ("What is the longest river in Japan?", "The longest river in Japan is the Shinano River, about 367 km long.",
     "日本で一番長い川は何ですか？", "日本で一番長い川は信濃川で、長さは約367キロメートルです。",
     "日本最长的河流是哪条？", "日本最长的河流是信浓川，全长约367公里。"),
    ("What is the largest lake in Japan?", "Lake Biwa in Shiga Prefecture is the largest lake in Japan.",
     "日本で一番大きい湖は何ですか？", "日本で一番大きい湖は滋賀県にある琵琶湖です。",
     "日本最大的湖是哪个？", "日本最大的湖是位于滋贺县的琵琶湖。"),
    ("What is the highest mountain in the world?", "Mount Everest, at 8,849 metres, is the highest mountain in the world.",
     "世界で一番高い山は何ですか？", "世界で一番高い山はエベレストで、標高は8,849メートルです。",
     "世界上最高的山是什么？", "世界上最高的山是珠穆朗玛峰，海拔8849米。"),
    ("How many days are there in a leap year?", "A leap year has 366 days.",
     "うるう年は何日ありますか？", "うるう年は366日あります。",
     "闰年有多少天？", "闰年有366天。"),
    ("At what temperature does water boil at sea level?", "At sea level, water boils at 100 degrees Celsius.",
     "海面の高さで水は何度で沸騰しますか？", "海面の高さでは、水は摂氏100度で沸騰します。",
     "在海平面，水在多少度沸腾？", "在海平面，水在摄氏100度沸腾。"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.",
     "太陽に一番近い惑星はどれですか？", "太陽に一番近い惑星は水星です。",
     "离太阳最近的行星是哪一颗？", "离太阳最近的行星是水星。"),
    ("What gas do plants absorb for photosynthesis?", "Plants absorb carbon dioxide for photosynthesis.",
     "植物は光合成のためにどの気体を吸収しますか？", "植物は光合成のために二酸化炭素を吸収します。",
     "植物进行光合作用时吸收哪种气体？", "植物进行光合作用时吸收二氧化碳。"),
    ("How many continents are there?", "There are seven continents.",
     "大陸はいくつありますか？", "大陸は七つあります。",
     "世界上有几个大洲？", "世界上有七个大洲。"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
     "地球で一番大きい海洋は何ですか？", "地球で一番大きい海洋は太平洋です。",
     "地球上最大的海洋是哪个？", "地球上最大的海洋是太平洋。"),
    ("Who wrote The Tale of Genji?", "The Tale of Genji was written by Murasaki Shikibu.",
     "源氏物語を書いたのは誰ですか？", "源氏物語を書いたのは紫式部です。",
     "《源氏物语》的作者是谁？", "《源氏物语》的作者是紫式部。"),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.",
     "金の元素記号は何ですか？", "金の元素記号はAuです。",
     "金的化学符号是什么？", "金的化学符号是Au。"),
]

# (en context, en question, en answer, ja context, ja question, ja answer, zh context, zh question, zh answer)
CLOSED_QA = [
    ("Mount Fuji is an active volcano on Honshu. It last erupted in 1707.", "When did Mount Fuji last erupt?", "In 1707.",
     "富士山は本州にある活火山です。最後の噴火は1707年でした。", "富士山が最後に噴火したのはいつですか？", "1707年です。",
     "富士山是本州岛上的一座活火山，最近一次喷发是在1707年。", "富士山最近一次喷发是什么时候？", "1707年。"),
    ("The Shinkansen opened in 1964, just before the Tokyo Olympics.", "When did the Shinkansen open?", "In 1964.",
     "新幹線は東京オリンピックの直前、1964年に開業しました。", "新幹線はいつ開業しましたか？", "1964年です。",
     "新干线于1964年开通，就在东京奥运会之前。", "新干线是哪一年开通的？", "1964年。"),
    ("Kyoto was the capital of Japan for more than a thousand years, until 1868.", "Until what year was Kyoto the capital?",
     "Until 1868.",
     "京都は1868年まで千年以上にわたり日本の都でした。", "京都は何年まで都でしたか？", "1868年までです。",
     "京都在1868年之前作为日本首都长达一千多年。", "京都作为首都到哪一年为止？", "到1868年为止。"),
    ("Honey bees live in colonies led by a single queen.", "Who leads a honey bee colony?", "A single queen.",
     "ミツバチは一匹の女王が率いる群れで暮らします。", "ミツバチの群れを率いるのは誰ですか？", "一匹の女王です。",
     "蜜蜂生活在由一只蜂王领导的蜂群中。", "谁领导蜜蜂的蜂群？", "一只蜂王。"),
    ("The library opens at 9 a.m. and closes at 6 p.m., except on Mondays.", "On which day is the library closed?",
     "On Mondays.",
     "図書館は月曜日を除き、午前9時に開き午後6時に閉まります。", "図書館が休みなのは何曜日ですか？", "月曜日です。",
     "图书馆除星期一外，上午9点开门，下午6点关门。", "图书馆哪天不开放？", "星期一。"),
    ("Takeshi has three cats and one dog.", "How many cats does Takeshi have?", "Three.",
     "たけしは猫を三匹と犬を一匹飼っています。", "たけしは猫を何匹飼っていますか？", "三匹です。",
     "武志养了三只猫和一只狗。", "武志养了几只猫？", "三只。"),
    ("The meeting was moved from Tuesday to Thursday afternoon.", "When is the meeting now?", "On Thursday afternoon.",
     "会議は火曜日から木曜日の午後に変更されました。", "会議は今いつですか？", "木曜日の午後です。",
     "会议从星期二改到了星期四下午。", "会议现在是什么时候？", "星期四下午。"),
    ("Green tea is made from leaves that are steamed soon after picking, so they do not oxidise.",
     "Why do green tea leaves not oxidise?", "Because they are steamed soon after picking.",
     "緑茶は摘んですぐに蒸した葉から作られるため、酸化しません。", "緑茶の葉が酸化しないのはなぜですか？", "摘んですぐに蒸すからです。",
     "绿茶的叶子采摘后很快就经过蒸制，所以不会氧化。", "绿茶的叶子为什么不会氧化？", "因为采摘后很快就蒸制了。"),
    ("Hokkaido is the northernmost of Japan's four main islands.", "Which main island of Japan is the northernmost?",
     "Hokkaido.",
     "北海道は日本の四つの主要な島のうち最も北にあります。", "日本の主要な島で最も北にあるのはどれですか？", "北海道です。",
     "北海道是日本四个主要岛屿中最北的一个。", "日本主要岛屿中最北的是哪个？", "北海道。"),
    ("The train leaves at 8:15 and arrives in Osaka at 10:45.", "How long is the train ride?", "Two and a half hours.",
     "電車は8時15分に出発し、10時45分に大阪に着きます。", "電車の乗車時間はどのくらいですか？", "2時間半です。",
     "火车8点15分出发，10点45分到达大阪。", "乘火车要多长时间？", "两个半小时。"),
]

# (en text, label_en, ja text, label_ja, zh text, label_zh) with the label set in the instruction
SENTIMENT = [
    ("The food was delicious and the staff were kind.", "positive", "料理がおいしくて、店員さんも親切でした。", "ポジティブ",
     "饭菜很好吃，服务员也很亲切。", "正面"),
    ("The train was late again and nobody told us why.", "negative", "電車がまた遅れたのに、理由の説明がありませんでした。",
     "ネガティブ", "火车又晚点了，也没有人告诉我们原因。", "负面"),
    ("I loved the view from the hotel room.", "positive", "ホテルの部屋からの眺めが最高でした。", "ポジティブ",
     "我很喜欢酒店房间的景色。", "正面"),
    ("The package arrived broken.", "negative", "届いた荷物が壊れていました。", "ネガティブ", "收到的包裹是坏的。", "负面"),
    ("This book was a pleasure to read.", "positive", "この本は読んでいて楽しかったです。", "ポジティブ",
     "这本书读起来很愉快。", "正面"),
    ("The app crashes every time I open it.", "negative", "このアプリは開くたびに落ちます。", "ネガティブ",
     "这个应用每次打开都会崩溃。", "负面"),
]
# (en item, en class, ja item, ja class, zh item, zh class): fruit or vegetable
FRUIT_VEG = [
    ("apple", "fruit", "りんご", "果物", "苹果", "水果"),
    ("carrot", "vegetable", "にんじん", "野菜", "胡萝卜", "蔬菜"),
    ("banana", "fruit", "バナナ", "果物", "香蕉", "水果"),
    ("spinach", "vegetable", "ほうれん草", "野菜", "菠菜", "蔬菜"),
    ("grape", "fruit", "ぶどう", "果物", "葡萄", "水果"),
    ("cabbage", "vegetable", "キャベツ", "野菜", "卷心菜", "蔬菜"),
    ("peach", "fruit", "もも", "果物", "桃子", "水果"),
    ("onion", "vegetable", "たまねぎ", "野菜", "洋葱", "蔬菜"),
]

# (en topic, en ideas, ja topic, ja ideas, zh topic, zh ideas)
BRAINSTORM = [
    ("ways to save energy at home",
     "1. Switch to LED bulbs.\n2. Turn off devices at the plug.\n3. Dry laundry in the sun.\n4. Set the air conditioner one degree milder.",
     "家で節電する方法", "1. LED電球に替える。\n2. 使わない機器はコンセントを抜く。\n3. 洗濯物は天日で干す。\n4. エアコンの設定温度を1度控えめにする。",
     "在家节约用电的方法", "1. 换成LED灯泡。\n2. 不用的电器拔掉插头。\n3. 衣服在阳光下晾干。\n4. 空调温度调得温和一度。"),
    ("weekend activities for a rainy day",
     "1. Visit a museum.\n2. Bake bread.\n3. Start a jigsaw puzzle.\n4. Watch a film series.",
     "雨の週末の過ごし方", "1. 博物館に行く。\n2. パンを焼く。\n3. ジグソーパズルをする。\n4. 映画をまとめて観る。",
     "下雨天周末的活动", "1. 去博物馆。\n2. 烤面包。\n3. 拼拼图。\n4. 看一系列电影。"),
    ("names for a small coffee shop",
     "1. Morning Leaf\n2. The Quiet Cup\n3. Bean and Book\n4. Little Harbor Coffee",
     "小さな喫茶店の名前", "1. 朝の葉\n2. 静かなカップ\n3. 豆と本\n4. 小さな港珈琲",
     "小咖啡店的名字", "1. 晨叶\n2. 静杯\n3. 豆与书\n4. 小港咖啡"),
    ("ways to practise a new language",
     "1. Keep a diary in the language.\n2. Shadow short podcasts.\n3. Find a conversation partner.\n4. Label things at home.",
     "新しい言語を練習する方法", "1. その言語で日記を書く。\n2. 短いポッドキャストでシャドーイングする。\n3. 会話の相手を見つける。\n4. 家の物にラベルを貼る。",
     "练习一门新语言的方法", "1. 用这门语言写日记。\n2. 跟读短播客。\n3. 找一个会话伙伴。\n4. 给家里的东西贴标签。"),
    ("healthy snacks for the office",
     "1. Mixed nuts.\n2. Yogurt with fruit.\n3. Rice crackers.\n4. Vegetable sticks with hummus.",
     "職場で食べる健康的なおやつ", "1. ミックスナッツ。\n2. 果物入りヨーグルト。\n3. おせんべい。\n4. 野菜スティックとフムス。",
     "适合办公室的健康零食", "1. 混合坚果。\n2. 水果酸奶。\n3. 米饼。\n4. 蔬菜条配鹰嘴豆泥。"),
    ("themes for a school festival",
     "1. Around the world in one day.\n2. Science of everyday life.\n3. Old and new Japan.\n4. The future city.",
     "文化祭のテーマ", "1. 一日で世界一周。\n2. 身近な科学。\n3. 昔と今の日本。\n4. 未来の街。",
     "学校文化节的主题", "1. 一天环游世界。\n2. 生活中的科学。\n3. 日本的过去与现在。\n4. 未来城市。"),
]

# (en prompt, en text, ja prompt, ja text, zh prompt, zh text)
CREATIVE = [
    ("Write a haiku about autumn leaves.", "Red leaves drift and fall\nthe river carries them on\nquiet to the sea",
     "紅葉について俳句を詠んでください。", "もみじ葉の\n川に流れて\n海しずか",
     "写一首关于秋叶的俳句。", "红叶轻飘落\n随着河水慢慢流\n静静入大海"),
    ("Write a two-sentence story about a lost umbrella.",
     "A blue umbrella waited at the station for a week. On the eighth day a girl came back, smiling, and took it home through the rain.",
     "なくした傘について二文の物語を書いてください。", "青い傘は一週間、駅で持ち主を待っていた。八日目、少女が笑顔で戻ってきて、雨の中を一緒に帰った。",
     "写一个关于丢失的雨伞的两句话故事。", "一把蓝色的雨伞在车站等了一个星期。第八天，一个女孩笑着回来，撑着它走进了雨中。"),
    ("Write a short poem about the morning sea.", "The sea wakes slowly,\nsilver light on every wave,\ngulls call the day in.",
     "朝の海について短い詩を書いてください。", "ゆっくり目覚める海\n波ごとに銀の光\nかもめが朝を呼ぶ",
     "写一首关于清晨大海的短诗。", "大海慢慢醒来\n每一朵浪花都闪着银光\n海鸥唤来了清晨"),
    ("Write a slogan for a town library.", "Open a book, open the world.",
     "町の図書館の標語を考えてください。", "本をひらけば、世界がひらく。",
     "为镇上的图书馆写一句标语。", "打开一本书，打开一个世界。"),
    ("Describe a cat waking up, in three sentences.",
     "The cat stretches one paw into the sunlight. It yawns so wide that its whiskers tremble. Then it looks at you as if breakfast were late.",
     "猫が目を覚ます様子を三文で描写してください。", "猫は日なたに片方の前足を伸ばした。ひげが震えるほど大きなあくびをする。それから、朝ごはんが遅いと言いたげにこちらを見た。",
     "用三句话描写一只猫醒来的样子。", "猫把一只爪子伸进阳光里。它打了个大大的哈欠，胡须都在颤动。然后它看着你，好像早饭来晚了。"),
    ("Write a thank-you note to a neighbour who watered your plants.",
     "Thank you so much for watering my plants while I was away. They look happier than ever. Please let me treat you to tea soon.",
     "留守中に植物に水をやってくれた隣人へのお礼の手紙を書いてください。", "留守の間、植物に水をやってくださり本当にありがとうございました。前よりも元気に見えます。近いうちにお茶をごちそうさせてください。",
     "给在你外出时帮你浇花的邻居写一张感谢卡。", "非常感谢你在我外出时帮我浇花。它们看起来比以前更精神了。改天请你喝茶吧。"),
]

# (en, ja, zh) parallel sentences for translation
PARALLEL = [
    ("Good morning.", "おはようございます。", "早上好。"),
    ("Thank you very much.", "どうもありがとうございます。", "非常感谢。"),
    ("Where is the station?", "駅はどこですか？", "车站在哪里？"),
    ("I like green tea.", "私は緑茶が好きです。", "我喜欢绿茶。"),
    ("The weather is nice today.", "今日はいい天気です。", "今天天气很好。"),
    ("Please speak more slowly.", "もう少しゆっくり話してください。", "请说得慢一点。"),
    ("How much is this?", "これはいくらですか？", "这个多少钱？"),
    ("I am a student.", "私は学生です。", "我是学生。"),
    ("The highest mountain in Japan is Mount Fuji.", "日本で一番高い山は富士山です。", "日本最高的山是富士山。"),
    ("Tokyo is the capital of Japan.", "東京は日本の首都です。", "东京是日本的首都。"),
    ("It is raining in Kyoto.", "京都は雨が降っています。", "京都在下雨。"),
    ("I will go to the library tomorrow.", "明日、図書館に行きます。", "我明天去图书馆。"),
    ("This ramen is delicious.", "このラーメンはおいしいです。", "这碗拉面很好吃。"),
    ("Could you open the window?", "窓を開けていただけますか？", "你能打开窗户吗？"),
    ("My hobby is reading.", "私の趣味は読書です。", "我的爱好是读书。"),
    ("The meeting starts at ten.", "会議は十時に始まります。", "会议十点开始。"),
    ("Cherry blossoms bloom in spring.", "桜は春に咲きます。", "樱花在春天开放。"),
    ("I lost my wallet.", "財布をなくしました。", "我把钱包弄丢了。"),
    ("Let's eat lunch together.", "一緒に昼ごはんを食べましょう。", "我们一起吃午饭吧。"),
    ("The bus is late.", "バスが遅れています。", "公交车晚点了。"),
]
LANG_NAME = {
    "en": {"en": "English", "ja": "Japanese", "zh": "Chinese"},
    "ja": {"en": "英語", "ja": "日本語", "zh": "中国語"},
    "zh": {"en": "英语", "ja": "日语", "zh": "中文"},
}

# (en question, en paraphrase, ja question, ja paraphrase, zh question, zh paraphrase)
Q2Q = [
    ("What is the capital of France?", "Which city is France's capital?",
     "フランスの首都はどこですか？", "フランスの首都はどの都市ですか？", "法国的首都是哪里？", "哪座城市是法国的首都？"),
    ("How tall is Mount Fuji?", "What is the height of Mount Fuji?",
     "富士山の高さはどのくらいですか？", "富士山は何メートルありますか？", "富士山有多高？", "富士山的海拔是多少？"),
    ("How do I get to the airport?", "What is the way to the airport?",
     "空港へはどうやって行けばいいですか？", "空港までの行き方を教えてください。", "我怎么去机场？", "去机场应该怎么走？"),
    ("When does the shop open?", "What time does the shop start business?",
     "お店は何時に開きますか？", "お店の開店時間は何時ですか？", "商店几点开门？", "商店什么时候开始营业？"),
    ("Why is the sky blue?", "What makes the sky look blue?",
     "空はなぜ青いのですか？", "空が青く見える理由は何ですか？", "天空为什么是蓝色的？", "是什么让天空看起来是蓝色的？"),
    ("Can you recommend a good book?", "Is there a book you would suggest?",
     "おすすめの本はありますか？", "何か良い本を紹介してもらえますか？", "你能推荐一本好书吗？", "有没有你想推荐的书？"),
    ("How long does it take to learn Japanese?", "How much time is needed to master Japanese?",
     "日本語を身につけるにはどのくらいかかりますか？", "日本語を習得するのに必要な時間はどれくらいですか？",
     "学日语需要多长时间？", "掌握日语需要多少时间？"),
    ("Is it going to rain tomorrow?", "Will there be rain tomorrow?",
     "明日は雨が降りますか？", "明日の天気は雨になりそうですか？", "明天会下雨吗？", "明天有雨吗？"),
]


def records():
    out = []

    def add(rid, category, lang, instruction, output, input_="", source_lang=None):
        r = {"id": rid, "instruction": instruction, "input": input_, "output": output, "category": category, "lang": lang}
        if source_lang:
            r["source_lang"] = source_lang
        out.append(r)

    for i, (en_c, en_cap, ja_c, ja_cap, zh_c, zh_cap) in enumerate(CAPITALS):
        add(f"capital-{i:02d}-en", "open_qa", "en", f"What is the capital of {en_c}?", f"The capital of {en_c} is {en_cap}.")
        add(f"capital-{i:02d}-ja", "open_qa", "ja", f"{ja_c}の首都はどこですか？", f"{ja_c}の首都は{ja_cap}です。")
        add(f"capital-{i:02d}-zh", "open_qa", "zh", f"{zh_c}的首都是哪里？", f"{zh_c}的首都是{zh_cap}。")
    for i, (eq, ea, jq, ja_, zq, za) in enumerate(OPEN_QA):
        add(f"openqa-{i:02d}-en", "open_qa", "en", eq, ea)
        add(f"openqa-{i:02d}-ja", "open_qa", "ja", jq, ja_)
        add(f"openqa-{i:02d}-zh", "open_qa", "zh", zq, za)
    for i, row in enumerate(CLOSED_QA):
        for j, lang in enumerate(("en", "ja", "zh")):
            ctx, q, a = row[3 * j : 3 * j + 3]
            add(f"closedqa-{i:02d}-{lang}", "closed_qa", lang, q, a, input_=ctx)
    sentiment_instr = {
        "en": "Classify the sentiment of the text as positive or negative.",
        "ja": "次の文の感情をポジティブかネガティブに分類してください。",
        "zh": "请将下面文字的情感分类为正面或负面。",
    }
    for i, row in enumerate(SENTIMENT):
        for j, lang in enumerate(("en", "ja", "zh")):
            add(f"sentiment-{i:02d}-{lang}", "classification", lang, sentiment_instr[lang], row[2 * j + 1], input_=row[2 * j])
    fv_instr = {
        "en": "Is the following a fruit or a vegetable? Answer with one word.",
        "ja": "次のものは果物ですか、野菜ですか？一語で答えてください。",
        "zh": "下面这个是水果还是蔬菜？请用一个词回答。",
    }
    for i, row in enumerate(FRUIT_VEG):
        for j, lang in enumerate(("en", "ja", "zh")):
            add(f"fruitveg-{i:02d}-{lang}", "classification", lang, fv_instr[lang], row[2 * j + 1], input_=row[2 * j])
    bs_instr = {"en": "Brainstorm {t}.", "ja": "{t}をいくつか挙げてください。", "zh": "请列出一些{t}。"}
    for i, row in enumerate(BRAINSTORM):
        for j, lang in enumerate(("en", "ja", "zh")):
            add(f"brainstorm-{i:02d}-{lang}", "brainstorming", lang, bs_instr[lang].format(t=row[2 * j]), row[2 * j + 1])
    for i, row in enumerate(CREATIVE):
        for j, lang in enumerate(("en", "ja", "zh")):
            add(f"creative-{i:02d}-{lang}", "creative", lang, row[2 * j], row[2 * j + 1])
    tr_instr = {
        "en": "Translate the following {src} text into {tgt}.",
        "ja": "次の{src}を{tgt}に翻訳してください。",
        "zh": "请把下面的{src}翻译成{tgt}。",
    }
    for i, (en, ja, zh) in enumerate(PARALLEL):
        text = {"en": en, "ja": ja, "zh": zh}
        # ja->en and en->ja for every pair; zh directions for every other pair.
        pairs = [("ja", "en"), ("en", "ja")] + ([("zh", "en"), ("ja", "zh")] if i % 2 == 0 else [("en", "zh"), ("zh", "ja")])
        for src, tgt in pairs:
            # The instruction is written in the source language, as a user of that language would ask.
            names = LANG_NAME[src]
            instr = tr_instr[src].format(src=names[src], tgt=names[tgt])
            add(f"translate-{i:02d}-{src}2{tgt}", "translation", tgt, instr, text[tgt], input_=text[src], source_lang=src)
    for i, row in enumerate(Q2Q):
        q2q_instr = {
            "en": "Rewrite the question so that it asks the same thing in different words.",
            "ja": "同じ意味のまま、別の言い方で質問を書き換えてください。",
            "zh": "请换一种说法改写这个问题，意思不变。",
        }
        for j, lang in enumerate(("en", "ja", "zh")):
            add(f"q2q-{i:02d}-{lang}", "question_to_question", lang, q2q_instr[lang], row[2 * j + 1], input_=row[2 * j])
    return out


def main():
    recs = records()
    random.Random(0).shuffle(recs)
    for old in HERE.glob("part-*.jsonl"):
        old.unlink()
    for s in range(NUM_SHARDS):
        with open(HERE / f"part-{s:05d}.jsonl", "w", encoding="utf-8") as f:
            for r in recs[s::NUM_SHARDS]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(recs)} records in {NUM_SHARDS} shards")


if __name__ == "__main__":
    main()
