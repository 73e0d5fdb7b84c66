"""Generate the synthetic sample chat `examples/WhatsApp Chat with Noa.txt` and its facts file
`examples/WhatsApp Chat with Noa.facts.jsonl` (deterministic, no network).

Two invented people text each other for six months, as an Android WhatsApp export in the Israeli 24h locale
(`dd/mm/yyyy, HH:MM - Name: body`), exported from Daniel's phone:

- **Noa** (the persona the demo imitates) sends short bursts of lowercase messages with emoji, "haha"/"חחח",
  and mixes Hebrew and English (about a quarter of her messages hold Hebrew).
- **Daniel** writes one long, capitalised, punctuated message per turn, in English, with no emoji.

The chat has context a model can learn to follow, because a twin that ignores the message in front of it is what
the eval must catch:
- **Questions get answers.** Most of Daniel's turns ask something specific (what time at Nechama, which dish, how
  the pitch went) and Noa's burst opens with the answer to THAT question, in one of several phrasings that share its
  words; she asks back and Daniel answers her. A reply from another conversation does not fit.
- **Plans come back.** The trip to Rosh Pina, the Jasmine Riot concert at the Barby, the seder in Haifa, her sister
  Maya's visit from London and the Zelig pitch are made, then referred back to weeks later (PLANS).
- **Facts stay true.** Pita the cat, Studio Kav where she works as a designer, Florentin where she lives, her parents
  in Haifa ... come up in Noa's own words in many conversations. FACTS lists them with a question as Daniel would ask
  it; it is written as the facts file for the eval's facts probe.

The export also holds what real exports hold: the encryption notice, a few system lines, `<Media omitted>`,
deleted and edited messages, links and multi-line messages, plus a little *invented* personal data, mostly in
Noa's messages (see PLANTED_PII) for the privacy pass and the canary tests. No real person's messages are in it.

Run:  python examples/make_sample_chat.py            # rewrites both files next to this script
      python examples/make_sample_chat.py --out X.txt   # and X.facts.jsonl
The output depends only on SEED: the same script always writes the same bytes (tests check this).
"""

import random
from datetime import date, datetime
from pathlib import Path

import chatgen
from chatgen import Writer, fill

SEED = 20250105
START = date(2025, 1, 5)
END = date(2025, 6, 28)  # six months: enough for ~300 conversations and ~4,500 messages
NOA, DANIEL = "Noa", "Daniel"
OUT = Path(__file__).resolve().parent / "WhatsApp Chat with Noa.txt"
HEADER = "%d/%m/%Y, %H:%M - "  # Android, Israeli 24h locale

ENCRYPTION = ("Messages and calls are end-to-end encrypted. Only people in this chat can read, listen to, "
              "or share them. Learn more.")

# Invented personal data, each planted in Noa's messages (some twice, in two spellings) so that the privacy pass
# has something to find and a canary test can check that none of it reaches a dataset or a model.
PLANTED_PII = {
    "phone_il": ["050-234-5678", "+972 50-234-5678"],
    "phone_uk": ["+44 7700 123456"],
    "email": ["noa.levi.design@example.com"],
    "iban": ["IL29 0123 4500 0001 2345 678"],  # valid checksum, invented account
    "il_id": ["123456782"],  # valid Teudat Zehut check digit, the textbook example number
    "phone_il_landline": ["+972 4-693-1234"],  # the one planted in a Daniel message (the zimmer's owner)
}

LAUGH = ["haha", "hahaha", "hahahah", "חחח", "חחחח", "חחחחחח", "lol", "lmao"]
EMOJI = ["😂", "😂😂", "🤣", "😭", "🥹", "❤️", "😍", "🙈", "💀", "🙏", "✨", "🔥", "😅", "🥲", "👀", "😴", "🤦‍♀️", "💅"]

# Noa's small talk: reactions that fit anywhere after her answer.
NOA_GENERIC = [
    "{lol}", "{lol} {e}", "{e}", "omg", "wait", "ok ok", "סבבה", "יאללה", "כן", "נכון", "אוף", "ugh",
    "yesss", "noooo", "אני מתה", "lmaooo", "true", "ממש", "nice", "מושלם", "איזה כיף", "bruh", "מה",
    "stoppp", "i cant", "dead {e}", "נו באמת", "same", "די", "literally", "אחלה", "sure sure",
    "love it", "hmm", "kk", "תכף", "הכי", "for real", "no way", "😂😂😂", "🙈", "❤️❤️",
]

# How Noa starts a conversation before her question.
NOA_HELLO = ["heyyy", "hii", "{e}", "ok so", "morning {e}", "בוקר טוב", "היי", "wait", "u there?", "question",
             "ok listen", "מה קורה"]

DANIEL_GENERIC = [
    "That makes sense. I will think about it on the way home and let you know what I decide later tonight.",
    "I am laughing in the middle of the office now, and people are looking at me strangely, so thank you.",
    "Honestly, I had the same thought this morning, so I suppose that settles it for both of us.",
    "Fair enough. I will admit that it sounds slightly more reasonable when you explain it like that.",
]

# Each topic: "qa" pairs (Daniel's question in his phrasings, Noa's answer to THAT question in hers), "ask" pairs (Noa
# asks, Daniel answers), Noa's follow-ups after an answer, Daniel's remarks, and both people's goodbyes.
# Slots: {lol} laughter, {e} emoji, {day}, {time}, {dish}, {show}, {weather} (Noa's words), {weather_d} (Daniel's).
TOPICS = {
    "cafe": {
        "qa": [
            (["Are you free for coffee at Nechama {day}? I could be there around {time}, if that works for you.",
              "I need a break from this spreadsheet. Could we meet at Nechama {day}, at {time} or so?"],
             ["nechama {day} at {time} yes {e}", "{time} at nechama works", "yes!! nechama {time}",
              "nechama ב{time}? סגור"]),
            (["What should I order for you at Nechama, the usual flat white? I am already in the queue.",
              "I am at the counter at Nechama now. Would you like the usual flat white, or something new?"],
             ["flat white pls {e}", "the usual, flat white", "flat white and the cheesecake if they have it",
              "the usual flat white {e}"]),
            (["Is the barista with the moustache working today? I still owe him for the croissant from last week.",
              "Did the barista with the moustache ask about me again, or has he finally given up?"],
             ["moustache guy is here {lol}", "the moustache is working today {e}", "moustache asked about u again {lol}",
              "השפם פה, the moustache {lol}"]),
            (["Is the good table by the window free at Nechama, or should I bring my own chair this time?",
              "Is there a free table at Nechama right now? I can wait half an hour if it is packed again."],
             ["the window table is free {e}", "no table, its packed", "got the window table!!",
              "מלא אבל שמרתי לך table"]),
            (["Do they still have the cheesecake at Nechama, or did the people at the next table take the last piece?",
              "Should I get us a piece of the cheesecake, or are you still pretending to be on a diet?"],
             ["cheesecake yes obviously", "the last piece of cheesecake is ours {e}", "get the cheesecake {lol}",
              "cheesecake כן!!"]),
            (["Are you working from Nechama again today, or did the studio finally fix its internet connection?",
              "Is Nechama still your office on Sundays, or has Yael made everyone come in to the studio?"],
             ["working from nechama, studio wifi is dead {e}", "nechama is my office now {lol}",
              "yael wants us at studio kav today ugh", "עובדת מ nechama היום"]),
        ],
        "ask": [
            (["coffee at nechama?? {e}", "u free for nechama later?", "בא לי קפה בנחמה, אתה בא?"],
             ["Yes, I can be at Nechama in half an hour. Please save me a seat inside, away from the pigeons.",
              "I would love to, but I am stuck in a meeting until four. Could we say Nechama at half past four?"]),
            (["what do u want from nechama", "im at nechama, want something?"],
             ["A large americano with a little cold milk, please, and a croissant if they still have any left.",
              "Just a coffee, thank you. I am trying to avoid the cheesecake this week, with mixed results."]),
        ],
        "noa": ["the wifi is dead again {lol}", "they changed the cups {e}", "iced coffee weather {e}",
                "omg they remembered my order", "the music here today {e}", "found a table outside",
                "the croissants are gone {e}", "מלא אנשים"],
        "daniel": [
            "The last time we sat outside a pigeon stole half of my croissant, so I would prefer a table inside.",
            "They have put the prices up again. Eighteen shekels for a coffee is, in my opinion, a small tragedy.",
            "I tried the oat milk today, as you suggested, and I regret to inform you that it tastes like wet "
            "cardboard.",
        ],
        "noa_close": ["ok see u there {e}", "כבר מגיעה", "yalla coming", "bring the charger pls"],
        "daniel_close": ["Perfect, see you there. I will be the one with the laptop and the tired face.",
                         "Great. I will leave the office now and walk over, it should not take long."],
    },
    "beach": {
        "qa": [
            (["The forecast says it will be clear this evening. Would you like to go to Gordon for the sunset?",
              "Shall we go to Gordon beach after work {day}, if the jellyfish have left us alone?"],
             ["gordon at sunset yesss {e}", "sunset at gordon!!", "yes gordon {day}", "gordon בשקיעה כן"]),
            (["Are there jellyfish at Gordon today? I read that they were near Frishman yesterday.",
              "Is the water at Gordon full of jellyfish again, or is it safe to swim today?"],
             ["jellyfish everywhere {lol}", "no jellyfish at gordon today {e}", "jellyfish!!! מדוזות",
              "a few jellyfish, swim fast {lol}"]),
            (["Should I bring the matkot, or are you still angry about losing last time?",
              "Do you want to play matkot this evening? I promise not to hit the ball at the lifeguard again."],
             ["bring the matkot im gonna win", "matkot yes revenge time {e}", "matkot כן!!", "i didnt lose at matkot {lol}"]),
            (["What should I bring to the beach, apart from the chairs? Watermelon, a towel, cold water?",
              "I am going to the shop before the beach. Do you want watermelon, or something else cold?"],
             ["bring watermelon {e}", "watermelon and cold water pls", "watermelon!! אבטיח", "watermelon and a towel for me"]),
            (["Where are you on the beach? I am at the lifeguard tower and I cannot see you anywhere.",
              "Which part of Gordon are you on? The lifeguard tower, or near the pool as usual?"],
             ["left of the lifeguard tower {e}", "by the lifeguard tower, the pink towel", "ליד the lifeguard tower",
              "near the pool, not the lifeguard"]),
        ],
        "ask": [
            (["beach??? gordon later? {e}", "ים? sunset at gordon?"],
             ["Yes, I can leave the office at five and be at Gordon by half past, if the bus cooperates.",
              "I would love to. I will bring the chairs and something cold, and meet you at the lifeguard tower."]),
        ],
        "noa": ["the water is perfect {e}", "im already burnt {e}", "look at the sunset rn", "<Media omitted>",
                "sand in my phone again", "שכחתי מגבת", "the lifeguard keeps yelling at ppl {lol}",
                "im not leaving ever"],
        "daniel": [
            "Last time I spent the entire evening picking sand out of my bag, so I am bringing a proper towel.",
            "There is a man with a speaker playing very loud music next to us, and I am seriously considering moving.",
        ],
        "noa_close": ["ok come fast {e}", "yalla bye {e}", "see u at the lifeguard tower", "מחכה לך"],
        "daniel_close": ["I am on my way. I will meet you by the lifeguard tower in about twenty minutes.",
                         "Good, then it is settled. Sunset at Gordon, and I will bring something cold to drink."],
    },
    "haifa": {
        "qa": [
            (["Are you going up to Haifa this weekend? Please say hello to your parents from me.",
              "Will you be at your parents' in Haifa on Friday, or are you staying in Florentin this week?"],
             ["haifa this weekend yes {e}", "going to my parents in haifa friday", "haifa בשישי",
              "staying in florentin this week, haifa next week"]),
            (["What did your mother cook this time? Please tell me it was the kubbeh again.",
              "Did your mother make the kubbeh, or was it the fish this week?"],
             ["kubbeh!!! {e}", "my mom made kubbeh again", "kubbeh של אמא שלי {e}", "kubbeh and fish, im dying"]),
            (["How was the train to Haifa? I hope it was less crowded than the last time you went.",
              "Did you get a seat on the train to Haifa, or did you stand all the way from Tel Aviv again?"],
             ["the train to haifa was sooo full {e}", "stood all the way to haifa {lol}", "got a seat on the train!! miracle",
              "הרכבת מפוצצת, the train {e}"]),
            (["How is your grandmother? Did Savta Rivka ask about me again, or has she forgotten me?",
              "Was Savta Rivka there on Friday? Please tell her I am still practising my Hebrew, slowly."],
             ["savta rivka asked if ur jewish {lol}", "rivka says ur too thin {e}", "savta rivka שואלת עליך",
              "savta rivka loves u now"]),
            (["How is your father's back? Is he still climbing ladders in the garden, or talking politics?",
              "Did your father talk about politics all evening again, or was he up a ladder in the garden?"],
             ["my dad on the ladder again {e}", "אבא שלי מדבר על politics שוב", "politics all dinner {lol}",
              "his back is ok, he's in the garden"]),
        ],
        "ask": [
            (["my mom asks if u come to haifa next time {e}", "shabbat dinner at my parents in haifa?"],
             ["Please tell your mother I would love to come to Haifa, as long as there is kubbeh.",
              "I would love to come to Haifa next time, if your father promises not to talk about politics."]),
        ],
        "noa": ["the view from the carmel {e}", "<Media omitted>", "she packed me food for a week",
                "haifa is so quiet {lol}", "ate too much help", "אני מתפוצצת", "ok she loves u now"],
        "daniel": [
            "The train schedule on Friday is quite limited, so make sure you catch the one before three o'clock.",
            "Please remind your mother that I still have her casserole dish. I will bring it back the next time I "
            "come.",
        ],
        "noa_close": ["ok going to eat {e}", "ttyl {e}", "love u bye", "נדבר מחר"],
        "daniel_close": ["Enjoy the weekend with your family. Text me when you are on the train back on Saturday.",
                         "Have a good time, and do not let your father convince you to move back to Haifa."],
    },
    "dinner": {
        "qa": [
            (["What would you like for dinner tonight? I can order sushi, hummus, pizza, ramen, anything you want.",
              "I am about to order dinner. Shall I get {dish}, or do you feel like something else?"],
             ["{dish}!!!", "{dish} pls {e}", "בא לי {dish}", "{dish} from the place on levinsky"]),
            (["I was thinking of cooking pasta tonight. Would you like to come over around eight?",
              "Shall I make the lemon pasta tonight, or are you tired of my only recipe?"],
             ["lemon pasta at 8 yes {e}", "ur pasta is the best, coming at 8", "lemon pasta!! 8 סגור",
              "make the lemon pasta, no cilantro"]),
            (["Is there anything you do not want in the food, cilantro again? I am at the supermarket.",
              "Do you need anything from the supermarket, apart from the usual chocolate and no cilantro?"],
             ["no cilantro pls {e}", "chocolate and no cilantro {lol}", "בלי cilantro!!", "just chocolate {e}"]),
            (["Where do you want to eat on Friday? The sabich place on Frishman or the hummus in Jaffa?",
              "Shall we get sabich on Frishman for lunch, or is that the third time this week?"],
             ["sabich on frishman obviously {e}", "sabich always", "sabich!! סביח", "sabich, the one on frishman"]),
            (["Should I bring red or white wine tonight, or will your flatmate have drunk all of it already?",
              "Red or white tonight? I promise it will not be the red from last time."],
             ["white wine pls {e}", "not the red from last time {lol}", "white, לבן", "white, and i'll bring dessert"]),
        ],
        "ask": [
            (["dinner tonight? {e}", "מה אוכלים הערב", "u cooking tonight?"],
             ["I am cooking tonight, the lemon pasta, so come over at eight and bring nothing but yourself.",
              "I booked a table for eight o'clock. They said the kitchen is busy, so we should not be late."]),
            (["what r u eating", "did u eat already"],
             ["I burnt the onions while I was reading your messages, so dinner will be slightly rustic tonight.",
              "I had a sad sandwich at my desk, so I am very open to a proper dinner later."]),
        ],
        "noa": ["im sooo hungry", "מזמינה עכשיו", "ok but garlic bread", "can pita come {lol}", "איזה רעב",
                "i'll bring dessert"],
        "daniel": [
            "I ordered {dish}. The app says forty minutes, which means at least an hour in reality.",
            "I have bought far too much food again, so please come hungry and take some of it home with you.",
        ],
        "noa_close": ["ok see u at 8 {e}", "coming {e}", "yalla", "בדרך"],
        "daniel_close": ["Perfect. I will start cooking at half past seven, so please try to be on time for once.",
                         "Good, it is settled then. I will see you later this evening."],
    },
    "north": {
        "qa": [
            (["Which hike shall we do up north this time? Nahal Amud again, or something shorter?",
              "Do you still want to do Nahal Amud, even though the last part is quite steep?"],
             ["nahal amud!!", "nahal amud with the waterfall {e}", "nahal amud כן", "nahal amud but not at 6am"]),
            (["Where would you like to stay? The zimmer near Rosh Pina is free, but a little expensive.",
              "Shall I book the same zimmer in Rosh Pina, or do you want to try somewhere new?"],
             ["the rosh pina zimmer {e}", "rosh pina, it has a jacuzzi {lol}", "rosh pina!! ראש פינה",
              "same zimmer in rosh pina"]),
            (["Shall we leave at 7 on Thursday? I would like to avoid the traffic out of Tel Aviv.",
              "Can you be ready at 7 on Thursday morning, or is that too optimistic?"],
             ["7 is too early {lol}", "ok 7 but u bring coffee", "7?? נו באמת", "8 and not a minute before"]),
            (["Who is making the playlist this time? I would rather not listen to the same album for four hours.",
              "Will you make a playlist for the drive, or shall I choose the music this time?"],
             ["i'll make a playlist {e}", "playlist is mine, jasmine riot only", "אני על ה playlist",
              "the playlist is ready already"]),
        ],
        "ask": [
            (["when r we going north {e}", "did u book the zimmer??", "צפון מתי"],
             ["I looked at the weather for the weekend in the Galilee. It should be dry, but cold at night.",
              "The zimmer near Rosh Pina has a free room. I am waiting for the owner to call me back."]),
        ],
        "noa": ["we need snacks", "<Media omitted>", "look at this view", "im so excited {e}", "is it cold there?",
                "take the big jacket", "מה עם האוהל"],
        "daniel": [
            "Things we should bring:\n- sleeping bags\n- the small gas stove\n- six litres of water\n- a first aid kit",
            "I downloaded the offline maps, because last time we lost the signal in the middle of the trail.",
        ],
        "noa_close": ["ok book it {e}", "yalla!!", "best trip ever already", "סגור"],
        "daniel_close": ["I will book it tonight and send you the details. This is going to be a very good weekend.",
                         "Then it is decided. I will make a proper list, and you will ignore it, as usual."],
    },
    "concert": {
        "qa": [
            (["Which band do you want to see this summer? Jasmine Riot again, or someone new at the Barby?",
              "Is it still Jasmine Riot on repeat this week? I can hear it through your headphones."],
             ["jasmine riot obviously {e}", "jasmine riot on repeat", "jasmine riot כל היום",
              "the new jasmine riot album {e}"]),
            (["Where are they playing, the Barby? I would rather not drive to some field in the middle of nowhere.",
              "Is the concert at the Barby, or have they moved it somewhere bigger this time?"],
             ["at the barby {e}", "the barby!!", "בבארבי, the barby!!", "barby, standing only"]),
            (["What will you wear to the concert? Please do not say the boots, we will be standing for hours.",
              "Should we eat sabich before the concert, or will you be too excited to eat?"],
             ["the boots obviously {lol}", "the boots and a jacket {lol}", "מה אני לובשת, not the boots",
              "not the boots, the sneakers"]),
        ],
        "ask": [
            (["did u see the barby lineup {e}", "tickets for jasmine riot?"],
             ["The tickets for the concert went on sale this morning. I will try to get two before they sell out.",
              "I bought standing tickets, since you will not sit down anyway once they play the first song."]),
        ],
        "noa": ["i need to learn the new album", "ur the best {e}", "<Media omitted>", "they sound so good live",
                "im gonna cry {e}", "אין עליך", "we go early"],
        "daniel": [
            "The doors open at nine, but the band will probably not start before half past ten, as always.",
            "I have been listening to the new album on the way to work, and I have to admit it is very good.",
        ],
        "noa_close": ["best day ever {e}", "ok bye im listening to them now", "love uuu", "🎶🎶"],
        "daniel_close": ["I will put it in the calendar now, so neither of us can forget it or book something else.",
                         "Good. I will forward you the tickets tonight, please do not lose them this time."],
    },
    "pita": {
        "qa": [
            (["What has Pita done now? The photo you sent looks like a crime scene with a glass and a plant.",
              "Why is there a broken glass in the photo you sent? Please tell me Pita is not hurt."],
             ["pita knocked my glass again {e}", "pita is a criminal {lol}", "פיתה הפילה glass {lol}",
              "pita ate the plant again"]),
            (["What did Dr. Shani say? Is Pita really too fat, or is that just your mother's opinion?",
              "How did the visit to the vet go? Did Dr. Shani say anything about her weight?"],
             ["dr shani says pita is fine {e}", "shani says less cheese {lol}", "הווטרינרית shani אמרה שהיא בסדר",
              "dr shani says pita is fat but healthy"]),
            (["Where is Pita sleeping now? Last week it was the laundry basket, then my laptop, then the sofa.",
              "Where did Pita decide to sleep today? The laptop again, or the sofa?"],
             ["pita is on my laptop again {e}", "pita in the laundry basket {lol}", "פיתה ישנה על ה laptop",
              "pita on ur side of the sofa"]),
            (["Could you check on Pita tomorrow afternoon and feed her? I will be in Jerusalem all day.",
              "Can you feed Pita on Friday? I will be at my brother's until late."],
             ["yes i'll feed pita {e}", "ok i'll check on pita tomorrow", "אני אאכיל את pita",
              "pita and me, girls night {lol}"]),
        ],
        "ask": [
            (["look at pita {e}", "<Media omitted>", "פיתה!!!"],
             ["She is not fat, she is simply well fed, and I will ask you not to say that in front of her.",
              "She has decided that my laptop is the warmest place in the flat, and I cannot really argue with her."]),
            (["we get a second cat right {e}", "pita needs a sister"],
             ["We are not getting a second cat. Pita would never forgive us, and neither would my landlord.",
              "A second cat is out of the question, at least until Pita stops eating the plants."]),
        ],
        "noa": ["<Media omitted>", "queen {e}", "she hates u {lol}", "she loves me more", "she's so fat {e}",
                "look at her face", "מלכה"],
        "daniel": [
            "I bought her a new toy mouse for forty shekels, and she has been playing with the receipt for an hour.",
            "The neighbour says Pita sits on the windowsill and stares at her every morning.",
        ],
        "noa_close": ["kiss her for me {e}", "bye pita", "ok she's asleep {lol}", "פיתה ❤️"],
        "daniel_close": ["I will tell her you said hello, although I doubt she will care very much.",
                         "She is asleep on the sofa now, which is the only time the flat is truly quiet."],
    },
    "scooter": {
        "qa": [
            (["How is the scooter doing? Did Moti manage to fix the battery, or is it still in his shop?",
              "Is the scooter still at Moti's, or did he finally give it back to you?"],
             ["moti says 2 more days for the scooter {e}", "the scooter is still at moti's {lol}", "מוטי אמר עוד יומיים, the battery", "moti fixed the scooter!!! {e}"]),
            (["Where did the scooter die this time? Please tell me it was not in the middle of a crossing.",
              "Did the scooter make it to work this morning, or did it die on the way again?"],
             ["died on ibn gabirol again {lol}", "middle of ibn gabirol {e}", "died on ibn gabirol, מת לי",
              "made it to ibn gabirol then died"]),
            (["I saw a good second-hand bicycle on Facebook. Would you consider it before you fix the scooter again?",
              "Have you thought about the bicycle, or are you still loyal to the scooter?"],
             ["no bicycle no {lol}", "im not buying a bicycle", "אין מצב bicycle", "its a vintage scooter, no bike"]),
        ],
        "ask": [
            (["the scooter died again {e}", "הקורקינט מת", "guess who's walking {lol}"],
             ["If it dies again on the way to work, send me your location and I will come and rescue you.",
              "I have calculated that you have spent more on repairs this year than the scooter cost."]),
        ],
        "noa": ["the battery again {e}", "moti is my best friend now", "walking to work {e}", "im so sweaty",
                "pay me a taxi {lol}", "ok it stopped again"],
        "daniel": [
            "With respect, this is the fourth time this year. At some point the repairs will cost more than a new one.",
            "I am sorry, but I am laughing at the idea of you pushing that scooter all the way to the shop.",
        ],
        "noa_close": ["rip scooter {e}", "ok picking it up tomorrow", "אל תגיד כלום", "it will live {lol}"],
        "daniel_close": ["Good luck with it. I will not say anything else about bicycles, at least until next week.",
                         "Let me know when it is fixed, and I will stop worrying about you walking home at night."],
    },
    "work": {
        "qa": [
            (["How did the logo presentation go at the studio? I was thinking about you during my long meeting.",
              "Did the client like the new logo, or do they want it bigger again?"],
             ["they want the logo bigger {lol}", "they loved the logo!!! {e}", "ה logo גדול יותר שוב",
              "logo bigger and more blue {lol}"]),
            (["Are you still at Studio Kav? It is almost nine, and I think Yael should let you go home.",
              "Is Yael keeping you late at the studio again, or can we have dinner at a normal hour?"],
             ["still at studio kav {e}", "yael wants one more version", "עדיין ב studio kav",
              "leaving studio kav now"]),
            (["Is Figma crashing again today? You sounded furious on the phone.",
              "Is it still Figma that is crashing, or has it moved on to your whole computer?"],
             ["figma crashing again {e}", "i hate figma today", "figma קרסה", "figma and me are not speaking"]),
            (["What exactly does a designer do all day at a studio? My mother asked me and I could not explain it.",
              "My colleague asked what you do for a living. Should I say illustrator or graphic designer?"],
             ["graphic designer!! not illustrator {lol}", "im a designer, i make logos bigger {e}",
              "מעצבת גרפית, graphic designer", "designer, tell her designer"]),
        ],
        "ask": [
            (["this client is killing me {e}", "עבודה עבודה עבודה", "how's ur day"],
             ["My manager has moved the deadline to Thursday, so I will probably work late every night this week.",
              "I have had six meetings today, and I still do not understand what the project is supposed to do."]),
        ],
        "noa": ["meeting in 5", "need coffee", "im so tired {e}", "ok back to work", "כל היום ישיבות",
                "they changed everything again"],
        "daniel": ["Try to take a short walk after lunch, it always helps me when I am stuck on something.",
                   "My team finished the report. It is forty pages long and I suspect nobody will read beyond page two."],
        "noa_close": ["ok back to work {e}", "ttyl", "נדבר בערב", "bye {e}"],
        "daniel_close": ["Good luck with the rest of the day. Call me when you finish, whatever time it is.",
                         "I have to go back to my meeting now. We will talk properly this evening."],
    },
    "weather": {
        "qa": [
            (["Did you see the forecast? They are saying {weather_d} Are you staying home?",
              "Are you going out in this weather, or working from home today like a reasonable person?"],
             ["staying home in florentin {e}", "not leaving home today", "עובדת from home היום",
              "home with pita all day"]),
            (["How is your flat in Florentin coping? Mine is a sauna. Is your roof leaking again?",
              "Is the roof in Florentin still leaking, or did the landlord finally send someone?"],
             ["the florentin flat is a sauna {e}", "the roof is leaking again {lol}", "ה roof דולף שוב",
              "florentin is flooded lol"]),
        ],
        "ask": [
            (["{weather}", "did u see outside {e}", "מה זה המזג אוויר הזה"],
             ["I just got completely soaked on the way from the bus stop, so I hope you are staying inside today.",
              "It is forty degrees and my air conditioner has decided to make a new and very worrying noise."]),
        ],
        "noa": ["{weather}", "<Media omitted>", "my hair {e}", "the ayalon is a river {lol}",
                "pita is scared of the thunder", "i love it actually"],
        "daniel": ["The weather app says it will improve by the weekend, but the weather app has lied to me before."],
        "noa_close": ["stay dry {e}", "stay cool {e}", "ok bye", "שמור על עצמך"],
        "daniel_close": ["Stay inside and stay dry. I will call you in the evening.",
                         "Drink plenty of water and stay away from the sun until it cools down a little."],
    },
    "shows": {
        "qa": [
            (["Which series are you watching at the moment, still {show}? I need something new.",
              "What should we watch on Friday, {show} or Shtisel? I have finished everything else."],
             ["{show} obviously {e}", "shtisel again, dont judge", "{show}!!!", "אני בפרק 5 של {show}"]),
            (["Did you finish {show}? Please do not tell me how it ends, I am only halfway through.",
              "How far are you in {show}? I fell asleep in the middle of the last episode."],
             ["finished {show} and i cried {e}", "no spoilers for {show}!!!", "the ending of {show} {e}",
              "{show} ep 6, dont talk to me"]),
        ],
        "ask": [
            (["did u watch {show}", "https://www.instagram.com/reel/C9pTqA2xLmN/", "look at this {lol}"],
             ["I watched two more episodes of {show} last night, and I think I understand why you like it.",
              "I have just seen the video you sent me this morning. I cannot believe that cat opened the fridge."]),
        ],
        "noa": ["watch it with me", "the main guy is so annoying {lol}", "season 2 when", "ok im obsessed",
                "https://youtu.be/dQ7xLmT8pQa", "look at this https://www.instagram.com/p/C8kLmQx4Np7/ {lol}"],
        "daniel": ["My brother recommended a new series, but he also recommended that terrible film last month."],
        "noa_close": ["ok watching now {e}", "bye {lol}", "tonight!!", "לילה טוב"],
        "daniel_close": ["Good night. I am going to sleep before I start another episode.",
                         "Enjoy it, and we will talk about it tomorrow."],
    },
    "friends": {
        "qa": [
            (["How is your sister? Is Maya still happy in London, or is she tired of the rain?",
              "Did you speak to Maya this week? How is London treating her?"],
             ["maya says london is grey {e}", "maya loves london, hates the rain", "maya בלונדון מתה מקור, london {e}",
              "talked to maya, she misses hummus"]),
            (["Are you going bouldering with Shira this evening, or are your hands still hurting?",
              "How was bouldering with Shira? Did you finish the blue route in the end?"],
             ["bouldering with shira at 7 {e}", "finished the blue route with shira!!", "בולדרינג עם shira",
              "my hands from bouldering {lol}"]),
            (["What is Shira doing for her birthday? I need to know whether to buy her a present.",
              "Is Shira coming to dinner on Thursday, or is she still angry with me about the board game?"],
             ["shira is coming thursday {e}", "shira forgave u {lol}", "shira באה thursday", "shira wants a picnic"]),
        ],
        "ask": [
            (["shira says hi {e}", "maya called from london {e}"],
             ["Please say hello back from me. I still owe her a rematch of that terrible board game.",
              "That is lovely. Tell her that I still have the book she lent me and that I will return it."]),
        ],
        "noa": ["<Media omitted>", "she's the best", "we laughed so much", "i miss her {e}", "אני מתה עליה"],
        "daniel": ["I think your friends like me more than they like you, but I will not say that in front of them."],
        "noa_close": ["ok ttyl {e}", "bye {e}", "נדבר", "love u"],
        "daniel_close": ["Send them my love, and do not stay out too late, you have work tomorrow.",
                         "Have fun, and tell me everything tomorrow."],
    },
}

DISHES = ["sushi", "hummus", "pizza", "shakshuka", "ramen", "sabich", "pad thai"]
SHOWS = ["the bear", "shtisel", "fauda", "severance"]
DAYS = ["tomorrow", "on friday", "on sunday", "this evening"]
TIMES = ["10", "10:30", "11", "4", "5", "9"]
WEATHER_WINTER = (["its pouring {e}", "גשם!!!", "the rain omg {e}", "its so cold {e}", "thunder!!"],
                  "heavy rain all day tomorrow, with thunderstorms in the evening.")
WEATHER_SUMMER = (["its 38 degrees {e}", "im melting {e}", "שרב", "the heat {e}", "hamsin again ugh"],
                  "a heatwave until Sunday, with thirty-eight degrees in Tel Aviv.")

# Plans made, then referred back to weeks later: (from this day on, topic, Daniel's question, Noa's answers). Each
# stage opens the first conversation of its day; the rest of that conversation stays on the plan's topic.
PLANS = [
    (date(2025, 1, 20), "work", "When is the big pitch for Zelig? You said it was some time in February, I think.",
     ["the zelig pitch is feb 24 {e}", "zelig pitch feb 24, im dying already"]),
    (date(2025, 2, 10), "friends", "When is Maya coming from London? Has she booked her flight yet?",
     ["maya lands may 8!!! {e}", "maya booked, london to tlv may 8"]),
    (date(2025, 2, 24), "work", "Today is the Zelig pitch, isn't it? How did it go? I kept my fingers crossed.",
     ["the zelig pitch went ok i think {e}", "zelig pitch done, they smiled??"]),
    (date(2025, 3, 4), "work", "Did Zelig decide in the end, after the pitch in February? You have been very quiet.",
     ["zelig picked us!!! {e}", "studio kav got zelig 🔥"]),
    (date(2025, 3, 10), "north", "Shall we finally plan the trip up north for the 24th of April? I was thinking of "
     "Rosh Pina.", ["yes!! rosh pina on the 24th {e}", "rosh pina april 24 yesss"]),
    (date(2025, 3, 20), "haifa", "Your mother invited me to the seder in Haifa. Is that really all right with you?",
     ["seder in haifa yes!! my mom insists {e}", "ofc, seder at my parents in haifa"]),
    (date(2025, 4, 2), "north", "I have booked the zimmer in Rosh Pina for the 24th of April, as we said in March. "
     "Do you still want to do Nahal Amud on the Friday?", ["nahal amud friday yesss {e}", "rosh pina + nahal amud 🙌"]),
    (date(2025, 4, 8), "concert", "Jasmine Riot have announced a concert at the Barby on the 12th of June. Should I "
     "buy tickets tomorrow morning?", ["yes barby june 12!!! {e}", "buy the barby tickets pls pls"]),
    (date(2025, 4, 10), "haifa", "Are we taking the train to Haifa for the seder on Saturday, or shall I drive?",
     ["train to haifa for the seder, the 2pm {e}", "train! seder in haifa, my dad picks us up"]),
    (date(2025, 4, 14), "haifa", "Please thank your mother again for the seder. Has your grandmother recovered from "
     "my Hebrew?", ["savta rivka is still laughing {lol}", "rivka wants u at every seder now {e}"]),
    (date(2025, 4, 22), "north", "Only two days until Rosh Pina. Have you packed, or will you do it at midnight as "
     "usual?", ["packing for rosh pina tomorrow i swear", "rosh pina bag is half packed {lol}"]),
    (date(2025, 4, 28), "north", "I was looking at the photos from Rosh Pina again. Do you remember the breakfast at "
     "the zimmer?", ["the cheese at the zimmer {e} i miss rosh pina", "rosh pina breakfast forever"]),
    (date(2025, 5, 7), "friends", "Is Maya still landing tomorrow, as she said in February? Do you need a lift to the "
     "airport?", ["maya lands tomorrow at 6!!! {e}", "yes maya tomorrow, lift pls"]),
    (date(2025, 5, 12), "friends", "How was the week with Maya? Did she take the train to Haifa with you to see "
     "your parents?", ["maya and me in haifa, my mom cried {lol}", "maya ate all the kubbeh in haifa"]),
    (date(2025, 5, 25), "concert", "Remember the Barby on the 12th of June? Have you decided what to wear yet?",
     ["barby outfit is ready {e}", "for the barby? black, obviously"]),
    (date(2025, 6, 11), "concert", "Tomorrow is the Barby! Shall we eat something near the Barby first?",
     ["sabich before the barby {e}", "sabich on frishman then the barby"]),
    (date(2025, 6, 13), "concert", "Have you recovered from the Barby last night? My ears are still ringing.",
     ["my voice is gone after the barby {lol}", "the barby was the best night {e}"]),
    (date(2025, 6, 15), "north", "Shall we go back to Rosh Pina in the autumn, to the same zimmer as in April?",
     ["same zimmer as april yes {e}", "rosh pina in october!!"]),
]

# Facts that stay true all through the chat, as Daniel would ask about them, with the strings Noa uses for them.
# The generator writes them as the facts file; tests check that every answer is in at least 3 of Noa's messages.
FACTS = [
    {"question": "what's your cat called again?", "answers": ["Pita", "פיתה"], "topic": "pet"},
    {"question": "who's the vet you take the cat to?", "answers": ["Shani"], "topic": "pet"},
    {"question": "which studio are you working at these days?", "answers": ["Studio Kav"], "topic": "work"},
    {"question": "what do you do for a living, remind me?", "answers": ["designer"], "topic": "work"},
    {"question": "what's your boss at the studio called?", "answers": ["Yael"], "topic": "work"},
    {"question": "which program keeps crashing on you at work?", "answers": ["Figma"], "topic": "work"},
    {"question": "which client was the big pitch for?", "answers": ["Zelig"], "topic": "work"},
    {"question": "which neighbourhood is your flat in?", "answers": ["Florentin"], "topic": "home"},
    {"question": "where do your parents live?", "answers": ["Haifa"], "topic": "family"},
    {"question": "what does your mother always cook when you visit?", "answers": ["kubbeh"], "topic": "family"},
    {"question": "what's your grandmother's name?", "answers": ["Rivka"], "topic": "family"},
    {"question": "what's your sister's name again?", "answers": ["Maya"], "topic": "family"},
    {"question": "which city does your sister live in?", "answers": ["London", "לונדון"], "topic": "family"},
    {"question": "which café do we always go to?", "answers": ["Nechama", "נחמה"], "topic": "places"},
    {"question": "what's your usual order at the café?", "answers": ["flat white"], "topic": "places"},
    {"question": "who's the barista who always asks about me?", "answers": ["moustache"], "topic": "running joke"},
    {"question": "which beach do you always go to?", "answers": ["Gordon"], "topic": "places"},
    {"question": "who fixes your scooter every time it dies?", "answers": ["Moti"], "topic": "running joke"},
    {"question": "where does your scooter always break down?", "answers": ["Ibn Gabirol"], "topic": "running joke"},
    {"question": "which street is your favourite sabich place on?", "answers": ["Frishman"], "topic": "places"},
    {"question": "who's your favourite band?", "answers": ["Jasmine Riot"], "topic": "music"},
    {"question": "where are we seeing Jasmine Riot play?", "answers": ["Barby"], "topic": "music"},
    {"question": "where was the zimmer up north?", "answers": ["Rosh Pina"], "topic": "plans"},
    {"question": "which hike do you want to do up north?", "answers": ["Nahal Amud"], "topic": "plans"},
    {"question": "which series do you keep rewatching?", "answers": ["Shtisel"], "topic": "shows"},
    {"question": "who do you go climbing with?", "answers": ["Shira"], "topic": "friends"},
    {"question": "what kind of climbing do you do?", "answers": ["bouldering", "בולדרינג"], "topic": "friends"},
]


def topic_weights(day: date) -> dict[str, float]:
    """How likely each topic is on this day: the seasons and the plans move over the six months."""
    m = day.month
    w = {"cafe": 3, "beach": 0.3 * m, "haifa": 1.5 + (1.5 if day.weekday() in (3, 4) else 0), "dinner": 3,
         "north": 3 if m in (4, 5) else 0.4, "concert": 2.5 if m in (5, 6) else (0.5 if m >= 3 else 0),
         "pita": 2.5, "scooter": 2, "work": 2.5, "weather": 2 if m in (1, 2, 6) else 0.4, "shows": 1.5,
         "friends": 1.5}
    return {k: float(v) for k, v in w.items()}


def slots(rng: random.Random, day: date) -> dict[str, str]:
    """One conversation's choices (the dish, the show, ...), so both people talk about the same one."""
    weather = WEATHER_WINTER if day.month in (1, 2, 3) else WEATHER_SUMMER
    return {"day": rng.choice(DAYS), "time": rng.choice(TIMES), "dish": rng.choice(DISHES), "show": rng.choice(SHOWS),
            "weather": rng.choice(weather[0]), "weather_d": weather[1]}


def noa_decorate(text: str, rng: random.Random) -> str:
    """Noa's habits on top of a line: a trailing emoji or laugh now and then."""
    if text == "<Media omitted>" or text.startswith("http"):
        return text
    r = rng.random()
    if r < 0.22 and not any(e in text for e in EMOJI):
        text = f"{text} {rng.choice(EMOJI)}"
    elif r < 0.30:
        text = f"{text} {rng.choice(LAUGH)}"
    return text


class Chat:
    """The export being written, and the Noa turns already sent (no turn is sent twice in six months)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.w = Writer(rng, datetime(START.year, START.month, START.day, 9, 0), HEADER)
        self.seen: set[tuple[str, ...]] = set()

    def noa_turn(self, answer: str | None, t: dict, s: dict, day: date, tail: str | None) -> list[str]:
        """Noa's burst: the answer to Daniel's question first (else a topic line), then a few follow-ups."""
        rng = self.rng
        for _ in range(50):  # a burst already sent is drawn again
            first = answer if answer is not None else rng.choice(t["noa"])
            lines = [first] + [rng.choice(NOA_GENERIC) if rng.random() < 0.4 else rng.choice(t["noa"])
                               for _ in range(rng.choices((0, 1, 2, 3), weights=(3, 5, 3, 1))[0])]
            if tail is not None:
                lines.append(tail)
            lines = [line for i, line in enumerate(lines) if line not in lines[:i]]  # no line twice in a burst
            lines = [noa_decorate(fill(line, rng, s, LAUGH, EMOJI), rng) for line in lines]
            key = tuple(line for line in lines if line != "<Media omitted>")  # the dataset drops media
            if key not in self.seen:
                break
        self.seen.add(key)
        return lines

    def conversation(self, topic: str, day: date, extra: list[str], plan: tuple | None) -> None:
        """One conversation of 8-20 messages about `topic`; `extra` lines are slipped into Noa's first burst."""
        rng, w = self.rng, self.w
        t = TOPICS[topic]
        side = TOPICS[rng.choice([k for k in TOPICS if k != topic])]  # where the talk drifts once the topic is done
        qa = rng.sample(t["qa"], len(t["qa"])) + rng.sample(side["qa"], len(side["qa"]))
        asks = rng.sample(t["ask"], len(t["ask"]))
        s = slots(rng, day)
        target = rng.randint(8, 18)
        count = 0
        owed_noa: list[str] | None = None  # Noa's answers to the question Daniel just asked
        owed_daniel: list[str] | None = None  # Daniel's answers to the question Noa just asked
        if plan is not None:
            daniel_first, owed_noa = True, plan[3]
            w.say(DANIEL, plan[2])
            count += 1
            w.wait(2, 14)
        elif rng.random() < 0.5:
            daniel_first = False
        else:
            daniel_first = True
            q, owed_noa = qa.pop()
            w.say(DANIEL, fill(rng.choice(q), rng, s, LAUGH, EMOJI))
            count += 1
            w.wait(2, 14)
        opening = not daniel_first
        while count < target:
            closing = count >= target - 3
            # Noa's turn
            tail = None
            if opening or (not closing and asks and rng.random() < 0.3):
                q, owed_daniel = asks.pop() if asks else rng.choice(t["ask"])
                tail = rng.choice(q)
            elif closing:
                tail = rng.choice(t["noa_close"])
            answer = rng.choice(owed_noa) if owed_noa else None
            if opening:  # her question, after a greeting or a reaction unless this opening is still fresh
                lines = [fill(tail, rng, s, LAUGH, EMOJI)]
                while (key := tuple(x for x in lines if x != "<Media omitted>")) in self.seen or (
                        len(lines) == 1 and rng.random() < 0.5):
                    lines.insert(0, fill(rng.choice(NOA_HELLO), rng, s, LAUGH, EMOJI))
                self.seen.add(key)
            else:
                lines = self.noa_turn(answer, t, s, day, tail)
            opening = False
            owed_noa = None
            for i, line in enumerate(lines):
                if extra and (i == 1 or len(lines) == 1):
                    w.say(NOA, extra.pop(0))
                    count += 1
                    w.wait(0, 1)
                w.say(NOA, line)
                count += 1
                w.wait(0, 1)
            w.wait(1, 8)
            if count >= target:
                break
            # Daniel's turn: he answers what she asked, and usually asks something himself
            parts = [rng.choice(owed_daniel)] if owed_daniel else []
            owed_daniel = None
            if count >= target - 2:
                parts.append(rng.choice(t["daniel_close"]))
            elif qa and rng.random() < (0.5 if parts else 0.85):
                q, owed_noa = qa.pop()
                parts.append(rng.choice(q))
            elif not parts:
                parts.append(rng.choice(t["daniel"] + DANIEL_GENERIC))
            w.say(DANIEL, fill(" ".join(parts), rng, s, LAUGH, EMOJI))
            count += 1
            w.wait(2, 14)
        for line in extra:  # a conversation that ended early still gets its planted line
            w.say(NOA, line)
            w.wait(0, 1)


# Conversation number -> Noa lines to slip in: the planted personal data, special entries and their quirks.
SPECIALS = {
    12: ["This message was deleted"],
    31: [f"my new number btw {PLANTED_PII['phone_il'][0]} 📱"],
    58: [f"i wrote it on the form as {PLANTED_PII['phone_il'][1]} haha"],
    77: [f"if u cant reach me in london call maya's uk number {PLANTED_PII['phone_uk'][0]}"],
    104: [f"send the tickets to {PLANTED_PII['email'][0]} {EMOJI[9]}"],
    150: [f"{PLANTED_PII['iban'][0]} thats my iban for the zimmer money 🙏"],
    171: ["This message was deleted"],
    199: [f"my id for the insurance form is {PLANTED_PII['il_id'][0]}"],
    222: ["ok\nso\nhear me out\nwe get a second cat 🙈"],
    240: ["wait i spelled it wrong <This message was edited>"],
    265: ["the place is this one https://www.booking.com/hotel/il/zimmer-rosh-pina.html 😍"],
}


def generate(seed: int = SEED) -> str:
    """The whole export as text (ends with a newline)."""
    rng = random.Random(seed)
    chat = Chat(rng)
    w = chat.w
    w.system(ENCRYPTION)
    for n_conv, (day, plan, topic) in enumerate(chatgen.conversations(
            w, rng, START, END, PLANS, per_day=(5, 30, 40, 25), opens=(7, 30), gap=(90, 300),
            topic_weights=topic_weights), 1):
        chat.conversation(topic, day, list(SPECIALS.get(n_conv - 1, [])), plan)
        if n_conv == 32:  # right after the conversation where Noa gives her new number
            w.system("Noa changed their phone number to a new number. Tap to message or add the new number.")
        if n_conv == 90:
            w.wait(60, 90)
            w.system("Your security code with Noa changed. Tap to learn more.")
        if n_conv == 120:
            w.say(DANIEL, "Things we should bring to Rosh Pina:\n- sleeping bags\n- the small gas stove\n"
                          "- six litres of water\n- a first aid kit")
        if n_conv == 160:
            w.say(DANIEL, "The owner of the zimmer is called Yossi, and his number is "
                          f"{PLANTED_PII['phone_il_landline'][0]}, in case we arrive after ten.")
        if n_conv == 180:
            w.say(DANIEL, "You deleted this message")
        if n_conv == 210:
            w.say(DANIEL, "Sorry, I meant Thursday, not Tuesday. <This message was edited>")
        if n_conv == 250:
            w.say(DANIEL, "Here is the menu, the mushroom risotto is the one I told you about: "
                          "https://nechama-cafe.example/menu")
    return w.text()


if __name__ == "__main__":
    chatgen.main(__doc__.splitlines()[0], generate, FACTS, OUT, SEED)
